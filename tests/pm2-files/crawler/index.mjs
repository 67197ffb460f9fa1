// A stand-in for the app.
import http from 'http';
http.createServer((q, s) => s.end('ok\n')).listen(process.env.PORT || 0);
