// self-cluster.js — an app that clusters itself, as apps run in pm2's fork
// mode do. Run as a plain process (cluster.isPrimary) it forks $CHILDREN
// (default 2) cluster workers of its own on $PORT and, once every one
// listens, sends 'ready' to its parent (pm2's wait_ready). Its workers answer
// JSON {pid, ppid, isWorker, instance} ($NODE_APP_INSTANCE of the primary).
// Run as someone else's cluster worker it serves by itself, with no children.
'use strict';

const cluster = require('node:cluster');
const http = require('node:http');

const port = Number(process.env.PORT || 8000);

if (cluster.isPrimary) {
  const children = Number(process.env.CHILDREN || 2);
  let listening = 0;
  cluster.on('listening', () => {
    listening += 1;
    if (listening === children && typeof process.send === 'function') {
      console.log(`self-cluster: primary ${process.pid} ready with ${children} workers`);
      process.send('ready');
    }
  });
  for (let i = 0; i < children; i += 1) cluster.fork();
} else {
  http
    .createServer((req, res) => {
      res.setHeader('Content-Type', 'application/json');
      res.end(
        JSON.stringify({
          pid: process.pid,
          ppid: process.ppid,
          isWorker: cluster.isWorker,
          instance: process.env.NODE_APP_INSTANCE,
        }) + '\n'
      );
    })
    .listen(port);
}
