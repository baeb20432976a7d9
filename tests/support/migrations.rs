//! Migration folders, schema dumps and history reads.

use super::query_text;

/// A folder of migration files, removed when dropped.
pub fn migrations_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("dbmanager-migrations-")
        .tempdir()
        .unwrap();
    for (name, content) in files {
        std::fs::write(dir.path().join(name), content).unwrap();
    }
    dir
}

/// The example schema of `migrations/`.
pub fn example_migrations() -> dbmanager::migrate::Migrations {
    dbmanager::migrate::Migrations::from_dir(super::workspace_root().join("migrations"))
        .expect("the example migrations parse")
}

/// The user-visible schema of a database, one sorted line per table,
/// column, index and constraint: equal dumps mean equal schemas.
pub async fn catalog(url: &str) -> String {
    query_text(
        url,
        "SELECT string_agg(line, E'\\n' ORDER BY line) FROM (
            SELECT format('table %s.%s', table_schema, table_name) AS line
              FROM information_schema.tables
             WHERE table_schema NOT IN ('pg_catalog', 'information_schema')
            UNION ALL
            SELECT format('column %s.%s.%s %s nullable=%s default=%s', table_schema, table_name,
                          column_name, data_type, is_nullable, coalesce(column_default, ''))
              FROM information_schema.columns
             WHERE table_schema NOT IN ('pg_catalog', 'information_schema')
            UNION ALL
            SELECT format('index %s', indexdef)
              FROM pg_indexes
             WHERE schemaname NOT IN ('pg_catalog', 'information_schema')
            UNION ALL
            SELECT format('constraint %s %s %s', c.conrelid::regclass, c.conname, pg_get_constraintdef(c.oid))
              FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
             WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
        ) lines",
    )
    .await
}

/// The versions in a history table, ascending.
pub async fn history(url: &str, table: &str) -> Vec<i64> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let task = tokio::spawn(connection);
    let exists: bool = client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
        .await
        .unwrap()
        .get(0);
    let versions = if exists {
        client
            .query(
                &format!("SELECT version FROM {table} ORDER BY version"),
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    } else {
        Vec::new()
    };
    drop(client);
    let _ = task.await;
    versions
}
