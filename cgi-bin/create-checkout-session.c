/* Placeholder, being written. */
#include "log.h"
#include "response.h"

int
main(void)
{
	log_begin("create-checkout-session");
	response_error(OUT_INTERNAL, "not implemented yet");
	return 0;
}
