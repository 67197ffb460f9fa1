// shutdown-message.js — stops only on the IPC message "shutdown" (pm2's shutdown_with_message).
'use strict';

const http = require('node:http');

const port = Number(process.env.PORT || 8000);
const server = http.createServer((req, res) => res.end(`process ${process.pid}\n`));
server.listen(port, () => console.log(`shutdown-message: process ${process.pid} listening`));

process.on('SIGINT', () => console.log(`process ${process.pid} ignoring SIGINT`));
process.on('message', (message) => {
  if (message === 'shutdown') {
    console.log(`got shutdown pid ${process.pid}`);
    server.close();
    process.exit(0);
  }
});
