/* Placeholder, being written. */
#include "stripe.h"
