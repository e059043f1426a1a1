"""The PostgreSQL store: the same methods as `fleet.store.FleetStore`, on a shared server database that
several controller replicas use at once (psycopg 3 with a connection pool). See docs/scaling-out.md."""
