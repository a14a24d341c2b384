/*
 * Who is calling.  The caller is REMOTE_USER when Apache authenticated
 * the request, else the `sub` of an `Authorization: Bearer <JWT>`
 * verified with OpenSSL (HS256 with AUTH_JWT_SECRET, or RS256/ES256
 * with the PEM public key in AUTH_JWT_PUBLIC_KEY_FILE), else, where the
 * endpoint allows it, the server-to-server USAGE_API_KEY which may act
 * for any user.  Only this module touches tokens and keys.
 */
#ifndef AUTH_H
#define AUTH_H

#include <stddef.h>
#include <time.h>

#include "outcome.h"

enum auth_kind {
	AUTH_REMOTE_USER,
	AUTH_JWT,
	AUTH_API_KEY,
	AUTH__MAX
};

struct auth_caller {
	enum auth_kind kind;
	char *user_id;		/* owned; NULL for AUTH_API_KEY (acts for any user) */
};

/*
 * Identifies the caller.  allow_api_key: whether a Bearer equal to
 * USAGE_API_KEY (constant-time compare) is accepted.  OUT_OK and
 * *caller filled; OUT_UNAUTHORIZED (WWW-Authenticate queued) for no or
 * bad credentials; OUT_MISCONFIGURED when no method is configured.
 */
enum outcome auth_identify(int allow_api_key, struct auth_caller *caller)
    __attribute__((warn_unused_result));

/* OUT_OK when caller may act for user_id, OUT_FORBIDDEN otherwise. */
enum outcome auth_authorize(const struct auth_caller *caller, const char *user_id)
    __attribute__((warn_unused_result));

/* Frees what caller owns; NULL is fine. */
void auth_caller_free(struct auth_caller *caller);

/*
 * Verifies a compact JWS against the configured key at time now
 * (exp/nbf with AUTH_JWT_LEEWAY seconds, iss/aud when configured).
 * OUT_OK and *subject (caller frees), OUT_UNAUTHORIZED, or
 * OUT_MISCONFIGURED (no key, unreadable key file).
 */
enum outcome auth_verify_jwt(const char *token, size_t len, time_t now, char **subject)
    __attribute__((warn_unused_result));

#endif
