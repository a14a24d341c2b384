#include "webhook_sig.h"
