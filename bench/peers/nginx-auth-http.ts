/**
 * The auth_http responder nginx's mail proxy needs even without AUTH (`smtp_auth none`): it
 * answers every request "Auth-Status: OK" with the sink as the server to proxy to.
 *
 * Run as its own process (`node nginx-auth-http.js PORT SINK_PORT`), so its CPU shows as
 * nginx's cost, as it would in a deployment, and not as the bench's.
 */
import http from 'node:http';

const [portArg, sinkArg] = process.argv.slice(2);
const port = Number(portArg);
const sinkPort = String(Number(sinkArg));
if (!port || sinkPort === 'NaN') {
  process.stderr.write('usage: nginx-auth-http PORT SINK_PORT\n');
  process.exit(2);
}

const server = http.createServer((req, res) => {
  // nginx sends Auth-Method: none, Auth-SMTP-From/To; any of them would do.
  req.resume();
  res.writeHead(200, { 'Auth-Status': 'OK', 'Auth-Server': '127.0.0.1', 'Auth-Port': sinkPort });
  res.end();
});
server.listen(port, '127.0.0.1');
process.on('SIGTERM', () => server.close(() => process.exit(0)));
