// listen-error.js — reports why listen failed, then exits 1.
'use strict';

const http = require('node:http');

const port = Number(process.env.PORT || 8000);
const server = http.createServer((req, res) => res.end(`process ${process.pid}\n`));
server.on('error', (err) => {
  console.error(`listen error ${err.code} pid ${process.pid}`);
  process.exit(1);
});
server.listen(port, () => console.log(`listen-error: process ${process.pid} listening`));
