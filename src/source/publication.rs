//! The connector's publication on the source: livesync creates and owns one per connector.
//!
//! It is created with `publish_via_partition_root = true`, so a partitioned source table is
//! published — and copied and streamed — as its root and lands in one target table.

use tokio_postgres::Client;

use super::quote_ident;

/// Create the publication if it does not exist yet; true if it had to be created. The
/// connector's append-only publication (named by `names::append_publication_name`) publishes
/// inserts and truncates only.
pub async fn ensure(
    client: &Client,
    publication: &str,
    append_only: bool,
) -> Result<bool, tokio_postgres::Error> {
    let exists = client
        .query_opt(
            "SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await?;
    if exists.is_none() {
        let publish = if append_only {
            ", publish = 'insert, truncate'"
        } else {
            ""
        };
        client
            .batch_execute(&format!(
                "CREATE PUBLICATION {} WITH (publish_via_partition_root = true{publish})",
                quote_ident(publication)
            ))
            .await?;
        return Ok(true);
    }
    Ok(false)
}

/// What the connecting role may do with table `qualified` (as `regclass` spells it): whether it
/// owns it (adding a table to a publication requires that) and whether it is a superuser
/// (`ADD TABLES IN SCHEMA` requires that). Read-only: `add_table` checks these at once, and the
/// connector's worker makes the change after the catalog commits.
pub async fn privileges(
    client: &Client,
    qualified: &str,
) -> Result<(bool, bool), tokio_postgres::Error> {
    let r = client
        .query_one(
            "SELECT coalesce((SELECT pg_catalog.pg_has_role(c.relowner, 'USAGE') FROM pg_catalog.pg_class c
                               WHERE c.oid = pg_catalog.to_regclass($1)), false),
                    coalesce((SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = current_user), false)",
            &[&qualified],
        )
        .await?;
    Ok((r.get(0), r.get(1)))
}

/// Whether `schema.name` is in the publication.
pub async fn contains(
    client: &Client,
    publication: &str,
    schema: &str,
    name: &str,
) -> Result<bool, tokio_postgres::Error> {
    Ok(client
        .query_opt(
            "SELECT 1 FROM pg_catalog.pg_publication p
               JOIN pg_catalog.pg_publication_rel pr ON pr.prpubid = p.oid
               JOIN pg_catalog.pg_class c ON c.oid = pr.prrelid
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
              WHERE p.pubname = $1 AND n.nspname = $2 AND c.relname = $3",
            &[&publication, &schema, &name],
        )
        .await?
        .is_some())
}

/// Publish every table of `schema` too (PostgreSQL 15+): how the chunks of a source hypertable —
/// including chunks created later, from their very first row — reach the stream. Chunks are
/// inheritance children, which `publish_via_partition_root` does not cover, and adding each new
/// chunk by name after it appeared would miss the rows written in the transaction creating it.
/// Changes of chunks no synced table owns are ignored by the apply.
pub async fn add_schema(
    client: &Client,
    publication: &str,
    append_only: bool,
    schema: &str,
) -> Result<(), tokio_postgres::Error> {
    ensure(client, publication, append_only).await?;
    let present = client
        .query_opt(
            "SELECT 1 FROM pg_catalog.pg_publication p
               JOIN pg_catalog.pg_publication_namespace pn ON pn.pnpubid = p.oid
               JOIN pg_catalog.pg_namespace n ON n.oid = pn.pnnspid
              WHERE p.pubname = $1 AND n.nspname = $2",
            &[&publication, &schema],
        )
        .await?;
    if present.is_none() {
        client
            .batch_execute(&format!(
                "ALTER PUBLICATION {} ADD TABLES IN SCHEMA {}",
                quote_ident(publication),
                quote_ident(schema)
            ))
            .await?;
    }
    Ok(())
}

pub async fn add_table(
    client: &Client,
    publication: &str,
    append_only: bool,
    schema: &str,
    name: &str,
) -> Result<(), tokio_postgres::Error> {
    ensure(client, publication, append_only).await?;
    if !contains(client, publication, schema, name).await? {
        client
            .batch_execute(&format!(
                "ALTER PUBLICATION {} ADD TABLE {}.{}",
                quote_ident(publication),
                quote_ident(schema),
                quote_ident(name)
            ))
            .await?;
    }
    Ok(())
}

/// Every table in the publication, chunk schemas' tables included (`pg_publication_tables`);
/// None when the publication does not exist.
pub async fn tables(
    client: &Client,
    publication: &str,
) -> Result<Option<Vec<(String, String)>>, tokio_postgres::Error> {
    if client
        .query_opt(
            "SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await?
        .is_none()
    {
        return Ok(None);
    }
    let rows = client
        .query(
            "SELECT schemaname::text, tablename::text FROM pg_catalog.pg_publication_tables WHERE pubname = $1",
            &[&publication],
        )
        .await?;
    Ok(Some(rows.iter().map(|r| (r.get(0), r.get(1))).collect()))
}

pub async fn drop_table(
    client: &Client,
    publication: &str,
    schema: &str,
    name: &str,
) -> Result<(), tokio_postgres::Error> {
    if contains(client, publication, schema, name).await? {
        client
            .batch_execute(&format!(
                "ALTER PUBLICATION {} DROP TABLE {}.{}",
                quote_ident(publication),
                quote_ident(schema),
                quote_ident(name)
            ))
            .await?;
    }
    Ok(())
}
