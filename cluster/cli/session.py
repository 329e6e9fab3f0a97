"""`vsim login`, `vsim logout` and `vsim status`: a session with vCenter.

Login pins the vCenter's certificate thumbprint on first use (or with
`--accept-new-thumbprint`) and keeps the session token in the user's config; every
other command reuses it through `Context.client`.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys

from vsim.cluster import output
from vsim.cluster.cli.common import Command, Context, Subcommands
from vsim.cluster.config import Settings
from vsim.faults import InvalidArgument

ADMINISTRATOR = "administrator@vsphere.local"
"""vsim.vcenter.sessions.ADMINISTRATOR, the default user (a unit test checks they agree)."""


async def cmd_login(args: argparse.Namespace, ctx: Context) -> None:
    user = args.user or ctx.settings.user or ADMINISTRATOR
    password = args.password or os.environ.get("VSIM_PASSWORD")
    if password is None:
        if not sys.stdin.isatty():
            raise InvalidArgument("no password given: pass --password or set VSIM_PASSWORD")
        password = getpass.getpass(f"Password for {user}@{ctx.server}: ")
    from vsim.cluster.client import VCenterClient

    pinned = None if args.accept_new_thumbprint else ctx.config.pinned(ctx.server)
    async with await VCenterClient.connect(ctx.server, pinned) as client:
        first_use = pinned is None
        session = await client.login(user, password)
        ctx.config.pin(ctx.server, client.thumbprint)
    ctx.config.save_settings(Settings(server=ctx.server, user=user, session=session))
    note = " (thumbprint pinned on first use)" if first_use else ""
    ctx.show(
        {"server": ctx.server, "user": user, "thumbprint": client.thumbprint, "pinned": first_use},
        f"Logged in to {ctx.server} as {user}{note}\nThumbprint: {client.thumbprint}",
    )


async def cmd_logout(args: argparse.Namespace, ctx: Context) -> None:
    async with await ctx.client() as client:
        await client.logout()
    ctx.config.save_settings(Settings(server=ctx.server, user=ctx.settings.user))
    ctx.show({"server": ctx.server, "logged_out": True}, f"Logged out of {ctx.server}")


async def cmd_status(args: argparse.Namespace, ctx: Context) -> None:
    async with await ctx.client() as client:
        status = await client.status()
    d = output.to_dict(status)
    d["now"] = output.when(status.now)
    d["server"] = ctx.server
    ctx.show(status, output.fields(d))


def add_commands(commands: Subcommands, command: Command) -> None:
    p = command(commands, "login", cmd_login, "log in to vCenter and pin its certificate")
    p.add_argument("--user", help=f"default: {ADMINISTRATOR}")
    p.add_argument("--password", help="default: $VSIM_PASSWORD, else asked")
    p.add_argument(
        "--accept-new-thumbprint",
        action="store_true",
        help="trust the certificate the server presents now, replacing the pinned one",
    )
    command(commands, "logout", cmd_logout, "end the session")
    command(commands, "status", cmd_status, "show the vCenter and cluster summary")
