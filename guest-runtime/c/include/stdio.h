/* <stdio.h> for xos C guests: the runtime's declarations are in xos_guest.h. */
#include "../xos_guest.h"
