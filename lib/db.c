#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "config.h"
#include "db.h"
#include "limits.h"
#include "log.h"
#include "mem.h"

struct db {
	PGconn *conn;
	char *url;	/* the DATABASE_URL it was made with (a secret: never logged) */
	int begin_pending; /* db_begin called; BEGIN goes out with the next statement */
};

struct db_rows {
	PGresult *res;
};

/* libpq prints notices to stderr by default; they may quote data, so drop them. */
static void
ignore_notice(void *arg, const char *message)
{
	(void)arg;
	(void)message;
}

enum outcome
db_connect(struct db **out)
{
	const char *url;
	char timeout[16];
	const char *keys[] = { "dbname", "connect_timeout", "application_name", NULL };
	const char *vals[4];
	PGconn *conn = NULL;
	enum outcome rc;

	*out = NULL;
	if ((rc = config_require("DATABASE_URL", &url)) != OUT_OK)
		return rc;
	snprintf(timeout, sizeof(timeout), "%d", LIMIT_DB_CONNECT_S);
	vals[0] = url;
	vals[1] = timeout;
	vals[2] = "billing-cgi";
	vals[3] = NULL;
	/* expand_dbname: the URL's own settings win over ours where both exist. */
	conn = PQconnectdbParams(keys, vals, 1);
	if (conn == NULL) {
		log_msg("database connection could not be allocated");
		return OUT_UNAVAILABLE;
	}
	if (PQstatus(conn) != CONNECTION_OK) {
		log_msg("database connection failed");
		PQfinish(conn);
		return OUT_UNAVAILABLE;
	}
	PQsetNoticeProcessor(conn, ignore_notice, NULL);
	*out = mem_calloc(1, sizeof(**out));
	(*out)->conn = conn;
	(*out)->url = mem_strdup(url);
	return OUT_OK;
}

void
db_close(struct db *db)
{
	if (db == NULL)
		return;
	PQfinish(db->conn);
	mem_free_secret(db->url, strlen(db->url));
	free(db);
}

/*
 * Whether an idle connection still works, without a round trip: a server
 * that went away (restart, pg_terminate_backend) has sent its FATAL and
 * closed, so the socket reads; consuming that marks the connection bad.
 */
static int
idle_usable(struct db *db)
{
	struct pollfd p;

	if (PQstatus(db->conn) != CONNECTION_OK)
		return 0;
	p.fd = PQsocket(db->conn);
	p.events = POLLIN;
	p.revents = 0;
	if (p.fd < 0)
		return 0;
	if (poll(&p, 1, 0) > 0 && (PQconsumeInput(db->conn) == 0 ||
	    PQstatus(db->conn) != CONNECTION_OK))
		return 0;
	return 1;
}

enum outcome
db_reuse(struct db **db)
{
	const char *url = config_get("DATABASE_URL");

	if (*db != NULL && (url == NULL || strcmp(url, (*db)->url) != 0 || !idle_usable(*db))) {
		db_close(*db);
		*db = NULL;
	}
	if (*db != NULL)
		return OUT_OK;
	return db_connect(db);
}

void
db_release(struct db **db)
{
	if (*db == NULL)
		return;
	/* A request that failed mid-transaction must not hand it to the next. */
	db_rollback(*db);
	if (PQstatus((*db)->conn) != CONNECTION_OK ||
	    PQtransactionStatus((*db)->conn) != PQTRANS_IDLE) {
		db_close(*db);
		*db = NULL;
	}
}

static enum db_result
classify(PGconn *conn, const PGresult *res)
{
	const char *state;

	if (PQstatus(conn) == CONNECTION_BAD)
		return DB_CONNECTION;
	state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
	if (state == NULL)
		return DB_CONNECTION;
	if (strcmp(state, "23505") == 0)
		return DB_UNIQUE_VIOLATION;
	if (strncmp(state, "23", 2) == 0 || strncmp(state, "22", 2) == 0)
		return DB_CHECK_VIOLATION;
	if (strcmp(state, "40001") == 0)
		return DB_SERIALIZATION;
	if (strcmp(state, "40P01") == 0)
		return DB_DEADLOCK;
	if (strncmp(state, "08", 2) == 0 || strncmp(state, "57P", 3) == 0)
		return DB_CONNECTION;
	return DB_ERROR;
}

/*
 * BEGIN and the transaction's first statement in one round trip (libpq
 * pipeline mode, PostgreSQL protocol 3 "pipelining"): the statement's
 * result, or a failed BEGIN's.  NULL when the connection failed.
 */
static PGresult *
exec_after_begin(struct db *db, const char *sql, int nparams, const char *const *params)
{
	PGresult *res, *got[2] = { NULL, NULL };
	int i;

	if (PQenterPipelineMode(db->conn) != 1)
		return NULL;
	if (PQsendQueryParams(db->conn, "BEGIN", 0, NULL, NULL, NULL, NULL, 0) == 1 &&
	    PQsendQueryParams(db->conn, sql, nparams, NULL, params, NULL, NULL, 0) == 1 &&
	    PQpipelineSync(db->conn) == 1) {
		/* Each query's results, then a NULL; then the sync's own result. */
		for (i = 0; i < 2; i++) {
			while ((res = PQgetResult(db->conn)) != NULL) {
				if (got[i] == NULL)
					got[i] = res;
				else
					PQclear(res);
			}
		}
		PQclear(PQgetResult(db->conn));
	}
	if (PQexitPipelineMode(db->conn) != 1) {
		/* Results we cannot account for: this connection is done for. */
		log_msg("database pipeline left in an unknown state");
		PQclear(got[0]);
		PQclear(got[1]);
		PQreset(db->conn);
		return NULL;
	}
	/* A failed BEGIN aborts the pipeline: its result is the one to report. */
	if (got[0] != NULL && PQresultStatus(got[0]) != PGRES_COMMAND_OK) {
		PQclear(got[1]);
		return got[0];
	}
	PQclear(got[0]);
	return got[1];
}

enum db_result
db_exec(struct db *db, struct db_rows **rows, const char *sql, int nparams,
    const char *const *params)
{
	PGresult *res;
	ExecStatusType st;
	enum db_result r;
	const char *state;

	if (rows)
		*rows = NULL;
	if (db->begin_pending) {
		db->begin_pending = 0;
		res = exec_after_begin(db, sql, nparams, params);
	} else
		res = PQexecParams(db->conn, sql, nparams, NULL, params, NULL, NULL, 0);
	st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
	if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) {
		if (rows) {
			*rows = mem_alloc(sizeof(**rows));
			(*rows)->res = res;
		} else
			PQclear(res);
		return DB_OK;
	}
	r = classify(db->conn, res);
	state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
	/* Expected outcomes (a duplicate delivery) are the caller's to log. */
	if (r != DB_UNIQUE_VIOLATION)
		log_msg("database error sqlstate=%s", state ? state : "none");
	PQclear(res);
	return r;
}

enum db_result
db_begin(struct db *db)
{
	/* Sent with the first statement: one round trip less per transaction. */
	db->begin_pending = 1;
	return DB_OK;
}

enum db_result
db_commit(struct db *db)
{
	if (db->begin_pending) {
		db->begin_pending = 0;	/* nothing was run: nothing to commit */
		return DB_OK;
	}
	return db_exec(db, NULL, "COMMIT", 0, NULL);
}

void
db_rollback(struct db *db)
{
	PGresult *res;

	if (db != NULL)
		db->begin_pending = 0;
	if (db == NULL || PQstatus(db->conn) != CONNECTION_OK ||
	    PQtransactionStatus(db->conn) == PQTRANS_IDLE)
		return;
	res = PQexec(db->conn, "ROLLBACK");
	PQclear(res);
}

enum outcome
db_outcome(enum db_result r)
{
	switch (r) {
	case DB_OK:
		return OUT_OK;
	case DB_CONNECTION:
	case DB_SERIALIZATION:
	case DB_DEADLOCK:
		return OUT_UNAVAILABLE;
	default:
		return OUT_INTERNAL;
	}
}

int
db_retryable(enum db_result r)
{
	return r == DB_SERIALIZATION || r == DB_DEADLOCK;
}

int
db_rows_count(const struct db_rows *rows)
{
	return rows ? PQntuples(rows->res) : 0;
}

const char *
db_rows_get(const struct db_rows *rows, int row, int col)
{
	if (rows == NULL || row < 0 || row >= PQntuples(rows->res) || col < 0 ||
	    col >= PQnfields(rows->res) || PQgetisnull(rows->res, row, col))
		return NULL;
	return PQgetvalue(rows->res, row, col);
}

void
db_rows_free(struct db_rows *rows)
{
	if (rows == NULL)
		return;
	PQclear(rows->res);
	free(rows);
}
