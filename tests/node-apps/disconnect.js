// disconnect.js — closes its IPC channel on request.
//
// GET /                   -> "process <pid>"
// GET /disconnect         -> answers, then process.disconnect(); a cluster worker whose channel
//                            closes unexpectedly exits 0 (Node's rule, under any primary)
// GET /disconnect?keep=1  -> marks the disconnect as intended first
//                            (cluster.worker.exitedAfterDisconnect = true), so it keeps serving
'use strict';

const cluster = require('node:cluster');
const http = require('node:http');

const port = Number(process.env.PORT || 8000);

const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://localhost');
  res.setHeader('X-Worker-Pid', String(process.pid));
  if (url.pathname === '/disconnect') {
    const keep = url.searchParams.get('keep') === '1';
    res.on('finish', () => {
      if (keep && cluster.worker) cluster.worker.exitedAfterDisconnect = true;
      console.log(`process ${process.pid} disconnecting (keep ${keep})`);
      if (process.connected) process.disconnect();
    });
    res.end(`process ${process.pid} disconnecting\n`);
  } else {
    res.end(`process ${process.pid}\n`);
  }
});

server.listen(port, () => console.log(`disconnect: process ${process.pid} listening`));

process.on('disconnect', () => console.log(`process ${process.pid} channel closed`));
process.on('exit', (code) => console.log(`process ${process.pid} exit ${code}`));
