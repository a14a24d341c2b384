/* subscription: placeholder, being written. */
#ifndef SUBSCRIPTION_H
#define SUBSCRIPTION_H
#endif
