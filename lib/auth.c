/* Placeholder, being written. */
#include <stdlib.h>
#include "auth.h"
enum outcome auth_identify(int allow_api_key, struct auth_caller *caller) { (void)allow_api_key; caller->user_id = NULL; return OUT_MISCONFIGURED; }
enum outcome auth_authorize(const struct auth_caller *caller, const char *user_id) { (void)caller; (void)user_id; return OUT_FORBIDDEN; }
void auth_caller_free(struct auth_caller *caller) { if (caller) free(caller->user_id); }
enum outcome auth_verify_jwt(const char *token, size_t len, time_t now, char **subject) { (void)token; (void)len; (void)now; *subject = NULL; return OUT_MISCONFIGURED; }
