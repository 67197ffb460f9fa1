// sockets.js MODE — one kind of socket per mode, as a cluster worker uses it.
// Every mode logs `<mode> listening <port or path> pid <pid>` once it listens.
//   udp4, udp6   dgram socket on PORT (0: any); answers each datagram with `process <pid>`
//   tcp0         HTTP on port 0 (one port for all workers, as under Node's cluster)
//   twice0       two HTTP servers on port 0 in one worker (two different ports)
//   unix         HTTP on the Unix socket path SOCK
//   exclusive    HTTP on PORT with `exclusive: true` (the worker binds it alone), then
//                sends `ready`
//   fd           HTTP on `listen({fd: 3})` (herd's first --listen socket)
//   badfd        HTTP on `listen({fd: 9})` (no such listener): logs the error
//   sendhandle   HTTP on PORT; GET /send sends the primary a message with a socket handle
//   closable     HTTP on PORT (or on the Unix socket SOCK if set); GET /close answers, then
//                closes the server (logs `closed pid <pid>`) and keeps running
//   refuse       asks the primary for 127.0.0.1:PORT itself (a raw queryServer, as a buggy
//                or racing worker could) without a server behind it: Node's cluster code then
//                refuses (`accepted: false`) every connection handed to it
'use strict';

const dgram = require('node:dgram');
const http = require('node:http');
const net = require('node:net');

const mode = process.argv[2];
const port = Number(process.env.PORT || 0);
const answer = (req, res) => res.end(`process ${process.pid}\n`);

function said(server, what) {
  const a = server.address();
  const where = typeof a === 'string' ? a : a.port;
  console.log(`${what} listening ${where} pid ${process.pid}`);
}

function onError(err) {
  console.log(`${mode} error ${err.code} pid ${process.pid}`);
  process.exit(1);
}

if (mode === 'udp4' || mode === 'udp6') {
  const sock = dgram.createSocket(mode);
  sock.on('error', onError);
  sock.on('message', (msg, rinfo) => {
    sock.send(`process ${process.pid}`, rinfo.port, rinfo.address);
  });
  sock.bind(port, () => said(sock, mode));
} else if (mode === 'tcp0') {
  const s = http.createServer(answer).on('error', onError);
  s.listen(0, '127.0.0.1', () => said(s, mode));
} else if (mode === 'twice0') {
  const a = http.createServer(answer).on('error', onError);
  const b = http.createServer(answer).on('error', onError);
  a.listen(0, '127.0.0.1', () => {
    b.listen(0, '127.0.0.1', () => {
      console.log(`twice0 ports ${a.address().port} ${b.address().port} pid ${process.pid}`);
    });
  });
} else if (mode === 'unix') {
  const s = http.createServer(answer).on('error', onError);
  s.listen(process.env.SOCK, () => said(s, mode));
} else if (mode === 'exclusive') {
  const s = http.createServer(answer).on('error', onError);
  // herd is not asked for this socket, so it is not told the worker listens:
  // say so with the `ready` message (for --wait-ready).
  s.listen({ port, host: '127.0.0.1', exclusive: true }, () => {
    said(s, mode);
    process.send('ready');
  });
} else if (mode === 'fd' || mode === 'badfd') {
  const s = http.createServer(answer).on('error', onError);
  s.listen({ fd: mode === 'fd' ? 3 : 9 }, () => console.log(`${mode} listening pid ${process.pid}`));
} else if (mode === 'sendhandle') {
  const s = http.createServer((req, res) => {
    if (req.url !== '/send') return answer(req, res);
    // A handle the primary did not ask for: a fresh listening server.
    const extra = net.createServer();
    extra.listen(0, '127.0.0.1', () => {
      process.send({ sent: 'handle' }, extra, (err) => {
        extra.close();
        process.send({ after: 'handle', error: err ? err.message : null });
        res.end(`sent ${err ? err.message : 'ok'}\n`);
      });
    });
  });
  s.on('error', onError);
  s.listen(port, '127.0.0.1', () => said(s, mode));
} else if (mode === 'closable') {
  const s = http.createServer((req, res) => {
    if (req.url !== '/close') return answer(req, res);
    res.setHeader('Connection', 'close');
    res.end('closing\n', () => s.close(() => console.log(`closed pid ${process.pid}`)));
  });
  s.on('error', onError);
  if (process.env.SOCK) s.listen(process.env.SOCK, () => said(s, mode));
  else s.listen(port, '127.0.0.1', () => said(s, mode));
  setInterval(() => {}, 1 << 30); // keep running once the server is closed
} else if (mode === 'refuse') {
  require('node:cluster'); // a cluster worker: its code answers `newconn`
  process.send({
    cmd: 'NODE_CLUSTER', act: 'queryServer', index: 0, data: null,
    address: '127.0.0.1', port, addressType: 4, fd: undefined, backlog: 511, seq: 1000,
  });
  console.log(`refuse asked for ${port} pid ${process.pid}`);
  setInterval(() => {}, 1 << 30);
} else {
  console.error(`unknown mode ${mode}`);
  process.exit(2);
}
