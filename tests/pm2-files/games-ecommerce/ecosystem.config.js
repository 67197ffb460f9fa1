// Recreated from the public repository vitorbraga/games-ecommerce-server (ecosystem.config.js), with stand-in apps.
module.exports = {
    apps: [{
        name: "games-ecommerce-server",
        script: "./build/index.js",
        instances: "2",
        env: {
            NODE_ENV: "development",
        },
        env_production: {
            NODE_ENV: "production",
        }
    }]
}
