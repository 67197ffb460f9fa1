// Recreated from the public repository yisibell/pm2-perfmonitor (ecosystem.dev.config.cjs), with stand-in apps.
/**
 * @type { { apps: import('pm2').StartOptions[] } }
 */
module.exports = {
  apps: [
    {
      name: 'app2',
      script: './test/test.js',
      exec_mode: 'cluster',
      instances: 4,
    },
    {
      name: 'pm2-perfmonitor',
      script: './lib/app.js', // the module's entry
      watch: true, // watch by hand
      ignore_watch: ['node_modules', '.git'],
      env: {
        NODE_ENV: 'development',
      },
    },
  ],
}
