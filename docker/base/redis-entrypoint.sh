#!/bin/sh
# Entrypoint of avs-local/redis:7 (docker/base/redis.Dockerfile), after the official image's: arguments
# that are bare options (`--appendonly yes`) or a .conf file run redis-server, and redis-server runs with
# protected mode off. The official image compiles protected mode off; Debian's build keeps it on, which,
# with no password set, refuses every client not on loopback (so every other container). Options passed
# after it (a compose `command:`) come later and win: `--protected-mode yes` there turns it back on; a
# config file's own protected-mode line does not (command-line options override the file).
set -e
if [ "${1#-}" != "$1" ] || [ "${1%.conf}" != "$1" ]; then
    set -- redis-server "$@"
fi
if [ "$1" = redis-server ]; then
    shift
    case "${1:-}" in
        *.conf) conf=$1; shift; set -- redis-server "$conf" --protected-mode no "$@" ;;
        *) set -- redis-server --protected-mode no "$@" ;;
    esac
fi
exec "$@"
