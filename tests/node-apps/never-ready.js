// never-ready.js — serves, but never sends "ready" to its parent.
'use strict';

const http = require('node:http');

const port = Number(process.env.PORT || 8000);
const server = http.createServer((req, res) => res.end(`process ${process.pid}\n`));
server.listen(port, () => console.log(`never-ready: process ${process.pid} listening`));
// Keep the channel open (and the process alive) like an app that talks to its parent.
process.on('message', () => {});
