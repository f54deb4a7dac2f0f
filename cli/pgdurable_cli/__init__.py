"""The `pgdurable` command line (click). The SDK in src/pgdurable never imports it."""
