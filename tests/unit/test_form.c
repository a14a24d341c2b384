#include "tap.h"

int
main(void)
{
	ok(0, "form tests not written yet");
	return done_testing();
}
