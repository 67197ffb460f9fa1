// A stand-in for the app: serves on PORT.
require('http').createServer((q, s) => s.end('ok\n')).listen(process.env.PORT || 0);
