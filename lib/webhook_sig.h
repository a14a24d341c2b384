/* webhook_sig: placeholder, being written. */
#ifndef WEBHOOK_SIG_H
#define WEBHOOK_SIG_H
#endif
