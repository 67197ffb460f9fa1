// slow-stop.js — needs 400 ms after SIGINT to finish (a short drain), and
// keeps running after the cluster `disconnect` (an interval holds the loop).
'use strict';

const http = require('node:http');

const port = Number(process.env.PORT || 8000);
const server = http.createServer((req, res) => res.end(`process ${process.pid}\n`));
server.listen(port, () => console.log(`slow-stop: process ${process.pid} listening`));
setInterval(() => {}, 1000);

process.on('SIGINT', () => {
  console.log(`process ${process.pid} got SIGINT`);
  setTimeout(() => {
    console.log(`process ${process.pid} drained`);
    process.exit(0);
  }, 400);
});
