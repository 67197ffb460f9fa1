// worker-info.js — answers who it is in the cluster: {isWorker, id, pid}.
'use strict';

const cluster = require('node:cluster');
const http = require('node:http');

const port = Number(process.env.PORT || 8000);
const id = cluster.worker ? cluster.worker.id : null;

const server = http.createServer((req, res) => {
  res.setHeader('Content-Type', 'application/json');
  res.setHeader('X-Worker-Pid', String(process.pid));
  res.end(JSON.stringify({ isWorker: cluster.isWorker, id, pid: process.pid }) + '\n');
});

server.listen(port, () => {
  console.log(`worker-info: id ${id} pid ${process.pid} listening`);
});

if (typeof process.send === 'function') {
  process.on('message', (message) => {
    console.log(`got message ${JSON.stringify(message)}`);
    if (process.connected) process.send({ echo: message });
  });
}
if (cluster.worker) {
  cluster.worker.on('disconnect', () => console.log(`disconnect event pid ${process.pid}`));
}
