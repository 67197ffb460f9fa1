// hello.js — a plain `http` server with no dependencies.
//
// GET /          -> "process <pid> count <n>" (n counts requests to / in this process)
// GET /stop      -> answers, then exits with code 1 (to watch the supervisor restart it)
// GET /send?x=.. -> sends {type: 'hello', x} to the parent over the IPC channel
//
// When started with an IPC channel (as a cluster worker, or by herd), every message the
// parent sends is echoed back as {echo: message}. There is no cluster code here: whoever
// starts the process decides whether it shares a port with other workers.
'use strict';

const http = require('node:http');

const port = Number(process.env.PORT || 8000);
let count = 0;

const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://localhost');
  res.setHeader('X-Worker-Pid', String(process.pid));
  res.setHeader('Content-Type', 'text/plain; charset=utf-8');

  if (req.method === 'GET' && url.pathname === '/') {
    count += 1;
    res.end(`process ${process.pid} count ${count}\n`);
  } else if (url.pathname === '/stop') {
    console.log(`process ${process.pid} stopping on request`);
    // Exit only once the answer has been handed to the kernel.
    res.on('finish', () => process.exit(1));
    res.end(`process ${process.pid} stopping\n`);
  } else if (url.pathname === '/send') {
    if (typeof process.send !== 'function') {
      res.statusCode = 503;
      res.end('no IPC channel\n');
      return;
    }
    process.send({ type: 'hello', x: url.searchParams.get('x') });
    res.end(`process ${process.pid} sent\n`);
  } else {
    res.statusCode = 404;
    res.end('not found\n');
  }
});

server.listen(port, () => {
  console.log(`hello: process ${process.pid} listening on port ${port}`);
});

if (typeof process.send === 'function') {
  process.on('message', (message) => {
    // The channel may close (parent gone) between the message and the reply.
    if (process.connected) process.send({ echo: message });
  });
}
