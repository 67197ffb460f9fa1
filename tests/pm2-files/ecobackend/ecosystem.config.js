// Recreated from the public repository navanitvish/EcoBackend (ecosystem.config.js), with stand-in apps.
module.exports = {
  apps: [{
    name: 'ecobackend',
    script: './server.js',
    instances: 2,
    exec_mode: 'cluster',
    env: {
      NODE_ENV: 'production'
    },
    error_file: './logs/err.log',
    out_file: './logs/out.log',
    log_date_format: 'YYYY-MM-DD HH:mm:ss',
    max_memory_restart: '500M'
  }]
};
