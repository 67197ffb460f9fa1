// A pm2 process file, read by herd as pm2 reads it (scripts are found from
// where you run it, so run it from this folder):
//   cd examples/node && herd start ecosystem.config.js
//   cd examples/node && herd start ecosystem.config.js --env production
// (and by pm2 itself: `pm2 start ecosystem.config.js`).
module.exports = {
  apps: [
    {
      name: 'hello',
      script: './hello.js',
      instances: 2,
      exec_mode: 'cluster',
      kill_timeout: 5000,
      max_memory_restart: '200M',
      env: {
        PORT: 8000,
        NODE_ENV: 'development',
      },
      env_production: {
        NODE_ENV: 'production',
      },
    },
    {
      name: 'graceful',
      script: './graceful.js',
      instances: 'max',
      exec_mode: 'cluster',
      wait_ready: true,
      listen_timeout: 8000,
      kill_timeout: 12000,
      time: true,
      env: {
        PORT: 8001,
      },
    },
  ],
};
