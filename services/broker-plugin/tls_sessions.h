/* tls_sessions: how long the broker resumes a client's TLS session (see tls_sessions.c). */
#ifndef TWELVEFACTOR_TLS_SESSIONS_H
#define TWELVEFACTOR_TLS_SESSIONS_H

/* Parses plugin_opt_tls_session_lifetime (seconds, 1 to 604800) and installs the
 * policy for every TLS context the broker creates after this call. Returns 0, or
 * -1 after logging why the value is refused. */
int tls_sessions_configure(const char *lifetime);

#endif
