"""Writers to the analytics stores (ClickHouse server or embedded chDB, InfluxDB) and the
ClickHouse schema migrations."""
