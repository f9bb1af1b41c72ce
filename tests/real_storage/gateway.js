// Supabase's storage route (Kong) in small: /storage/v1/* -> the server's /*, X-Forwarded-* added, bodies
// streamed both ways. The forwarded host and port are the ones the client called (its Host header), so TUS
// Location URLs point back through whatever the client went through (the fault proxy in the tests).
const http = require('http')
const [listenPort, upstreamPort] = process.argv.slice(2).map(Number)
const PREFIX = '/storage/v1'
const agent = new http.Agent({ keepAlive: true })
const json = (res, status, body) => {
  res.writeHead(status, { 'content-type': 'application/json; charset=utf-8' })
  res.end(JSON.stringify(body))
}
http
  .createServer((req, res) => {
    if (!req.url.startsWith(PREFIX + '/')) return json(res, 404, { message: 'no Route matched with those values' })
    const [host, port] = (req.headers.host || '').split(':')
    const headers = {
      ...req.headers,
      'x-forwarded-prefix': PREFIX,
      'x-forwarded-host': host || '127.0.0.1',
      'x-forwarded-port': port || String(listenPort),
      'x-forwarded-proto': 'http',
    }
    const up = http.request(
      { host: '127.0.0.1', port: upstreamPort, method: req.method, path: req.url.slice(PREFIX.length), headers, agent },
      (ur) => {
        res.writeHead(ur.statusCode, ur.headers)
        ur.pipe(res)
      },
    )
    up.on('error', () => {
      if (!res.headersSent) json(res, 502, { message: 'An invalid response was received from the upstream server' })
      else res.destroy()
    })
    req.pipe(up)
  })
  .listen(listenPort, '127.0.0.1')
