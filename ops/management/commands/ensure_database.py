"""Make sure the configured database can be used, creating it when missing.

``make run`` calls this before migrating: a ``DATABASE_URL`` naming a
PostgreSQL database that does not exist yet gets it created (when the user
may), and a server that cannot be reached is explained in one line instead
of a traceback. SQLite needs nothing (the file is created on first use).
"""

import warnings

from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError, connection


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[-1].strip()


class Command(BaseCommand):
    help = "Check the database connection; create a missing PostgreSQL database."

    def handle(self, *args, **options):
        if connection.vendor != "postgresql":
            return
        settings = connection.settings_dict
        host, user, name = (
            settings.get("HOST") or "localhost",
            settings.get("USER"),
            settings["NAME"],
        )
        where = f"{host}:{settings.get('PORT') or 5432}"
        try:
            connection.ensure_connection()
            return
        except DatabaseError as exc:
            error = _first_line(exc)
        finally:
            connection.close()
        # The server's own maintenance database tells a missing database
        # apart from a server that is down or refuses this user.
        try:
            with warnings.catch_warnings():
                # Django warns when even the 'postgres' database cannot be reached.
                warnings.simplefilter("ignore", RuntimeWarning)
                with connection._nodb_cursor() as cursor:
                    cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name])
                    if cursor.fetchone() is not None:
                        raise CommandError(f"Cannot use the database {name!r} on {where}: {error}")
                    cursor.execute(f"CREATE DATABASE {connection.ops.quote_name(name)}")
        except CommandError:
            raise
        except DatabaseError:
            raise CommandError(
                f"Cannot use PostgreSQL at {where} ({error}). Start it, "
                f"create the database (createdb -h {host} -U {user or 'postgres'} {name}), or "
                "unset DATABASE_URL to use SQLite (Debian/Ubuntu: apt-get install postgresql)."
            ) from None
        self.stdout.write(f"Created the database {name!r} on {where}.")
