/*
 * Logging to stderr, which Apache's mod_cgi copies into its error log.
 * One summary line per request (log_finish) plus rare diagnostic lines.
 * Callers must never pass secrets, tokens, SQL text or full payloads:
 * log what happened and which setting or field, never a value.
 */
#ifndef LOG_H
#define LOG_H

/* Starts the request clock and makes a fresh request id. Call first. */
void log_begin(const char *endpoint);

/* 16 lowercase hex characters, unique per request (also sent as X-Request-Id). */
const char *log_request_id(void);

/* Milliseconds since log_begin. */
long log_elapsed_ms(void);

/* A diagnostic line: "billing-cgi <endpoint> rid=<id> <message>". */
void log_msg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Adds key=value to the summary line (e.g. event type); value is sanitised. */
void log_note(const char *key, const char *value);

/* The summary line: endpoint, status, duration and notes.  Called once by response. */
void log_finish(int status);

#endif
