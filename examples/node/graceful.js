// graceful.js — a server that shuts down without dropping requests in flight.
//
// GET /          -> "process <pid>"
// GET /slow?ms=N -> waits N ms (default 5000) before answering, to have a request in flight
//
// Once listening it sends "ready" to the parent, if there is an IPC channel (pm2's
// wait_ready convention). On SIGINT (and SIGTERM) it stops accepting connections, lets
// requests in flight finish (http-terminator closes idle keep-alive sockets at once and
// waits up to 10 s for busy ones), closes the IPC channel and exits 0.
'use strict';

const http = require('node:http');
const { createHttpTerminator } = require('http-terminator');

const port = Number(process.env.PORT || 8000);

const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://localhost');
  res.setHeader('Content-Type', 'text/plain; charset=utf-8');
  if (url.pathname === '/') {
    res.end(`process ${process.pid}\n`);
  } else if (url.pathname === '/slow') {
    const requested = Number(url.searchParams.get('ms'));
    const ms = Number.isFinite(requested) && requested >= 0 ? requested : 5000;
    setTimeout(() => res.end(`process ${process.pid} waited ${ms} ms\n`), ms);
  } else {
    res.statusCode = 404;
    res.end('not found\n');
  }
});

const terminator = createHttpTerminator({ server, gracefulTerminationTimeout: 10000 });

server.listen(port, () => {
  console.log(`graceful: process ${process.pid} listening on port ${port}`);
  if (typeof process.send === 'function') process.send('ready');
});

let stopping = false;
async function shutdown(signal) {
  if (stopping) return; // a second signal changes nothing; the supervisor may still SIGKILL
  stopping = true;
  console.log(`process ${process.pid} got ${signal}, finishing requests in flight`);
  await terminator.terminate();
  if (process.connected) process.disconnect();
  console.log(`process ${process.pid} stopped`);
  process.exit(0);
}
process.on('SIGINT', shutdown);
process.on('SIGTERM', shutdown);
