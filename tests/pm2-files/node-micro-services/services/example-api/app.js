// A stand-in for the app: serves on PORT (a free port without one), answers
// every request with its pid, argv and environment as JSON, and logs where
// it listens.
const http = require('http');
const server = http.createServer((req, res) => {
  res.setHeader('content-type', 'application/json');
  res.end(JSON.stringify({ pid: process.pid, argv: process.argv, env: process.env }));
});
server.listen(process.env.PORT || 0, () => {
  console.log(`listening on ${server.address().port} process ${process.pid}`);
});
