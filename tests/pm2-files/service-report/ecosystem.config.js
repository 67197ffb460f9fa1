// Recreated from the public repository Andy-droid958/service-report (ecosystem.config.js), with stand-in apps.
module.exports = {
  apps: [
    {
      name: 'service-report',
      script: './server.js',
      instances: 'max', 
      exec_mode: 'cluster',
      watch: false,
      max_memory_restart: '500M',
      env: {
        NODE_ENV: 'development',
        PORT: 3000
      },
      env_production: {
        NODE_ENV: 'production',
        PORT: 3000
      },
      error_file: './logs/err.log',
      out_file: './logs/out.log',
      log_file: './logs/combined.log',
      time: true,
      autorestart: true,
      max_restarts: 10,
      min_uptime: '10s',
      listen_timeout: 10000,
      kill_timeout: 5000,
      wait_ready: true,
      instance_var: 'INSTANCE_ID'
    }
  ]
};
