"""Source-IP pools from the settings, and the check that policies name only existing pools."""

from __future__ import annotations

from collections.abc import Mapping

from gateway.config.loader import ConfigError
from gateway.config.policy import Policy
from gateway.config.schema import Settings
from gateway.shaping.router import PoolSpec, SourceIp


def pools_from(settings: Settings) -> dict[str, PoolSpec]:
    """The configured pools; without any, one "default" pool that lets the OS pick the address."""
    pools = {pool.name: PoolSpec(pool.name, tuple(
        SourceIp(str(ip.address), ip.helo, ip.weight, ip.warmup_start) for ip in pool.ips),
        tuple(pool.streams)) for pool in settings.pools}
    return pools or {"default": PoolSpec("default", (SourceIp(None, settings.smtp.hostname),))}


def pool_names_by_ip(settings: Settings) -> dict[str, str]:
    """Source IP -> the pool(s) it is in ("a, b" when several), to name pools in traces."""
    names: dict[str, list[str]] = {}
    for pool in settings.pools:
        for ip in pool.ips:
            names.setdefault(str(ip.address), []).append(pool.name)
    return {ip: ", ".join(found) for ip, found in names.items()}


def check_pool_bindings(policy: Policy, pools: Mapping[str, PoolSpec]) -> None:
    """A profile's ``pool`` must name a configured pool (policy files cannot see config.toml)."""
    problems = [f"policy: providers.{name}.pool: no pool named {profile.pool!r} in the settings "
                f"(pools: {', '.join(sorted(pools))})"
                for name, profile in policy.providers.items()
                if profile.pool is not None and profile.pool not in pools]
    if problems:
        raise ConfigError(problems)
