/*
 * The only user of libpq.  Parameterised statements only (PQexecParams,
 * or PQexecPrepared in a long-lived process: db_long_lived; text
 * parameters, NULL pointer = SQL NULL); failures are classified
 * by SQLSTATE, never by message text, and logged by SQLSTATE only (no
 * SQL text, no parameters, no server message).
 *
 * Timeouts: every statement runs inside a transaction that starts with
 * statement_timeout, lock_timeout and idle_in_transaction_session_timeout
 * set LOCAL (settings DB_STATEMENT_TIMEOUT_MS, DB_LOCK_TIMEOUT_MS,
 * DB_IDLE_IN_TRANSACTION_TIMEOUT_MS; defaults in limits.h); a statement
 * run outside db_begin/db_commit gets a transaction of its own.  Why per
 * transaction and not per connection: startup `options=-c ...` is
 * refused (or, with ignore_startup_parameters, silently dropped) by
 * PgBouncer, and a session-level SET leaks to other clients under
 * transaction pooling; SET LOCAL lives exactly as long as the
 * transaction, directly and through any pooler.  It costs no round trip:
 * BEGIN, the SET LOCALs and the first statement go out as one libpq
 * pipeline; a lone statement goes out with the SET LOCALs alone, in the
 * implicit transaction that the pipeline's Sync commits.
 */
#ifndef DB_H
#define DB_H

#include "limits.h"
#include "outcome.h"

struct db;
struct db_rows;

enum db_result {
	DB_OK = 0,
	DB_UNIQUE_VIOLATION,	/* 23505 */
	DB_CHECK_VIOLATION,	/* 23xxx other than 23505: bad data */
	DB_SERIALIZATION,	/* 40001: retry the transaction */
	DB_DEADLOCK,		/* 40P01: retry the transaction */
	DB_TIMEOUT,		/* 57014 statement timeout, 55P03 lock timeout */
	DB_CONNECTION,		/* lost or refused connection, 08xxx, 57Pxx */
	DB_ERROR		/* anything else */
};

/*
 * Connects with DATABASE_URL (conninfo or URI).  OUT_OK and *db, or
 * OUT_MISCONFIGURED (DATABASE_URL missing, a DB_*_TIMEOUT_MS setting not
 * a whole number of milliseconds in range) / OUT_UNAVAILABLE (server
 * down), logged without the URL.
 */
enum outcome db_connect(struct db **db) __attribute__((warn_unused_result));

/*
 * Says that this process serves many requests (a FastCGI process): its
 * connections then prepare each statement once, by name, and run it by
 * name afterwards (PostgreSQL parses and plans it once per connection
 * instead of at every run), unless DATABASE_PREPARED_STATEMENTS is off or
 * the connection leads through a pooler (db.c, prepare_wanted).  Call
 * before connecting.
 */
void db_long_lived(void);

/* Closes the connection (rolling back an open transaction); NULL is fine. */
void db_close(struct db *db);

/*
 * For a process that serves many requests (serve keeps *db between
 * them): OUT_OK with *db usable, reusing the kept connection when it is
 * healthy and made with the current DATABASE_URL, else a new one (as
 * db_connect; *db is NULL on failure).
 */
enum outcome db_reuse(struct db **db) __attribute__((warn_unused_result));

/*
 * The end of a request's use of *db: rolls back a transaction it left
 * open; closes and forgets (*db = NULL) a connection that is broken or
 * still not idle.
 */
void db_release(struct db **db);

/*
 * Runs sql with nparams text parameters.  When rows is non-NULL and the
 * statement succeeds, *rows receives the result (free with
 * db_rows_free); on failure *rows is NULL.
 */
enum db_result db_exec(struct db *db, struct db_rows **rows, const char *sql,
    int nparams, const char *const *params) __attribute__((warn_unused_result));

/* The parameters listed inline as (nparams, params): DB_PARAMS(p1, p2). */
#define DB_PARAMS(...)                                                          \
	(int)(sizeof((const char *[]){ __VA_ARGS__ }) / sizeof(const char *)),  \
	    (const char *const[]){ __VA_ARGS__ }

/* db_exec with the parameters listed inline: DB_QUERY(db, &rows, sql, p1, p2). */
#define DB_QUERY(db, rows, sql, ...) db_exec((db), (rows), (sql), DB_PARAMS(__VA_ARGS__))

/* One statement of db_exec_batch or db_exec_parallel: sql with nparams text parameters. */
struct db_statement {
	const char *sql;
	int nparams;
	const char *const *params;
};

/*
 * Runs n (1..LIMIT_DB_BATCH) statements one after the other, as n
 * db_exec calls would (in the open transaction, else together in one of
 * their own), but in a single round trip: for statements none of whose
 * parameters comes from another's result, such as a lock and the read it
 * guards, or the last write and COMMIT.  The first failure ends the run
 * (the statements after it do not run) and is returned.  On DB_OK and
 * when rows is not NULL, rows[i] receives statement i's result (free
 * each with db_rows_free); otherwise every rows[i] is NULL.
 */
enum db_result db_exec_batch(struct db *db, int n, const struct db_statement *st,
    struct db_rows **rows) __attribute__((warn_unused_result));


/*
 * Runs n (1..LIMIT_DB_PARALLEL) independent read-only statements at the same
 * time, each in a transaction of its own: the first on db, the others on
 * connections opened for them and closed afterwards (where one cannot be
 * opened, that statement runs on db after the others).  For a page that
 * needs several slow aggregates: it waits for the slowest, not for their
 * sum.  db must not be in a transaction.  DB_OK and rows[i] for each
 * statement; otherwise the first failure and every rows[i] NULL.
 */
enum db_result db_exec_parallel(struct db *db, int n, const struct db_statement *st,
    struct db_rows **rows) __attribute__((warn_unused_result));

/*
 * BEGIN (READ COMMITTED) with the timeouts set LOCAL, COMMIT and
 * ROLLBACK.  db_begin sends nothing: BEGIN and the SET LOCALs go out in
 * one pipeline with the transaction's first statement, whose db_exec then
 * reports a failure of any of them.
 */
enum db_result db_begin(struct db *db) __attribute__((warn_unused_result));
enum db_result db_commit(struct db *db) __attribute__((warn_unused_result));
/* Best effort; safe to call when no transaction is open. */
void db_rollback(struct db *db);

/*
 * For a caller that will leave the open transaction idle for up to ms (a
 * mail being sent while its row stays locked): raises this transaction's
 * idle_in_transaction_session_timeout to ms when the one db_begin set
 * (DB_IDLE_IN_TRANSACTION_TIMEOUT_MS) is shorter, or the server would end
 * the session meanwhile.  Never lowers it; SET LOCAL, as the others.
 */
enum db_result db_hold_idle(struct db *db, long ms) __attribute__((warn_unused_result));

/*
 * Maps a failure to the outcome an endpoint answers with: OUT_UNAVAILABLE
 * for a lost connection, a timeout, serialization failure or deadlock
 * (worth retrying later), else OUT_INTERNAL.
 */
enum outcome db_outcome(enum db_result r);

/* Whether the result is worth retrying the whole transaction for. */
int db_retryable(enum db_result r);

int db_rows_count(const struct db_rows *rows);
/* The number of columns, and the name of column col (NULL out of range); owned by rows. */
int db_rows_fields(const struct db_rows *rows);
const char *db_rows_field_name(const struct db_rows *rows, int col);
/* The value at (row, col) as text, or NULL for SQL NULL or out of range. Owned by rows. */
const char *db_rows_get(const struct db_rows *rows, int row, int col);
void db_rows_free(struct db_rows *rows);

#endif
