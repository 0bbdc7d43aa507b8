// A database the outbox has no store for, or whose cargo feature is not
// enabled, is refused with one error that names the features to enable.
// (Here sqlx's `Any` driver: the outbox has no store for it at all.)
async fn start(pool: sqlx::AnyPool) -> Result<(), outbox::Error> {
    outbox::migrate(&pool).await
}

fn main() {
    let _ = start;
}
