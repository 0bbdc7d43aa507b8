//! The connection a statement of the Store runs on: plain, or behind a
//! pooler in transaction mode, unnamed inside a transaction.

use sqlx::database::HasStatementCache;
use sqlx::pool::PoolConnection;
use sqlx::{Database, Pool, Transaction};

use super::dialect::Query;

/// The connection one operation of the Store runs on.
///
/// Behind a pooler in transaction mode (PgBouncer's `pool_mode =
/// transaction`) a client's statements reach the same server connection
/// only within a transaction, and sqlx sends a statement in two exchanges
/// (parse, then bind and execute), each ending in a `Sync` after which the
/// pooler may hand the server to another client. A prepared statement
/// named there is unknown to (or another one on) the next server
/// (`prepared statement "sqlx_s_3" does not exist`); an unnamed one is
/// replaced by whatever another client parsed last (`bind message supplies
/// 4 parameters, but prepared statement "" requires 7`, or, when the
/// parameters happen to fit, that other statement run with these values).
/// So there every statement is unnamed ([`Conn::query`]) and runs inside an
/// explicit transaction, which holds one server connection from `BEGIN` to
/// `COMMIT`.
pub(crate) struct Conn<DB: Database> {
    conn: Held<DB>,
    unnamed: bool,
}

enum Held<DB: Database> {
    Plain(PoolConnection<DB>),
    Tx(Transaction<'static, DB>),
}

impl<DB: Database + HasStatementCache> Conn<DB> {
    /// For statements that need no transaction of their own: a transaction
    /// with unnamed statements when `pooled`, else a plain connection.
    pub(crate) async fn open(pool: &Pool<DB>, pooled: bool) -> Result<Self, sqlx::Error> {
        if pooled {
            return Self::begin(pool, true).await;
        }
        Ok(Self {
            conn: Held::Plain(pool.acquire().await?),
            unnamed: false,
        })
    }

    /// A transaction, its statements unnamed when `pooled`.
    pub(crate) async fn begin(pool: &Pool<DB>, pooled: bool) -> Result<Self, sqlx::Error> {
        Ok(Self {
            conn: Held::Tx(pool.begin().await?),
            unnamed: pooled,
        })
    }

    /// `query`, unnamed when it must be.
    pub(crate) fn query(&self, query: Query<DB>) -> Query<DB> {
        query.persistent(!self.unnamed)
    }

    /// Commit the transaction, if it is one.
    pub(crate) async fn commit(self) -> Result<(), sqlx::Error> {
        match self.conn {
            Held::Plain(_) => Ok(()),
            Held::Tx(tx) => tx.commit().await,
        }
    }

    /// Roll the transaction back, if it is one.
    pub(crate) async fn rollback(self) -> Result<(), sqlx::Error> {
        match self.conn {
            Held::Plain(_) => Ok(()),
            Held::Tx(tx) => tx.rollback().await,
        }
    }
}

impl<DB: Database> std::ops::Deref for Conn<DB> {
    type Target = DB::Connection;
    fn deref(&self) -> &DB::Connection {
        match &self.conn {
            Held::Plain(conn) => conn,
            Held::Tx(tx) => tx,
        }
    }
}

impl<DB: Database> std::ops::DerefMut for Conn<DB> {
    fn deref_mut(&mut self) -> &mut DB::Connection {
        match &mut self.conn {
            Held::Plain(conn) => conn,
            Held::Tx(tx) => tx,
        }
    }
}
