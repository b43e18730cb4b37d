"""The rulebook: every threshold, window and policy of the programs, parsed strictly from TOML.

A rulebook is data. It is read with :mod:`tomllib`, validated into frozen pydantic models (unknown
keys, unknown levels and thresholds that do not increase are errors naming the key), and nothing in
it is ever evaluated as code. Money amounts are converted to integer fen here, once.
"""

from __future__ import annotations

import hashlib
import tomllib
from decimal import Decimal, InvalidOperation
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from schemas.contract import ATTRIBUTE_VALUES, SERVICE_TYPES, Retention


class RulebookError(ValueError):
    """The rulebook file is unreadable or breaks a rule; the message names the key."""


def _yuan_to_fen(value: object) -> int:
    """Parse a yuan amount given as a string or an integer into exact integer fen."""
    if isinstance(value, bool | float):
        raise ValueError('write money as a quoted amount such as "150.00" (floats are inexact)')
    if isinstance(value, int):
        return value * 100
    if not isinstance(value, str):
        raise ValueError(f"expected a yuan amount, got {type(value).__name__}")
    try:
        amount = Decimal(value)
    except InvalidOperation as exc:
        raise ValueError(f"{value!r} is not a yuan amount") from exc
    if not amount.is_finite() or amount != amount.quantize(Decimal("0.01")):
        raise ValueError(f"{value!r} must have at most two decimals")
    return int(amount * 100)


def _ratio(value: object) -> Decimal:
    if isinstance(value, bool):
        raise ValueError("expected a ratio between 0 and 1")
    if isinstance(value, int | float | str):
        try:
            ratio = Decimal(str(value))
        except InvalidOperation as exc:
            raise ValueError(f"{value!r} is not a ratio") from exc
        if not (Decimal(0) <= ratio <= Decimal(1)):
            raise ValueError("a ratio must be between 0 and 1")
        return ratio
    raise ValueError("expected a ratio between 0 and 1")


Fen = Annotated[int, BeforeValidator(_yuan_to_fen)]
"""A money amount in the rulebook: written in yuan, held in integer fen."""
Ratio = Annotated[Decimal, BeforeValidator(_ratio)]
DayOfMonth = Annotated[int, Field(ge=1, le=28, strict=True)]
PositiveInt = Annotated[int, Field(ge=1, strict=True)]
NonNegativeInt = Annotated[int, Field(ge=0, strict=True)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Calendar(_Strict):
    evaluation_day: DayOfMonth = 5
    expiry_day: DayOfMonth = 8
    validity_months: PositiveInt = 12
    at_risk_horizon_months: PositiveInt = 3
    """A member is at risk when its level is re-rated at one of this many next evaluations (SPEC 8)."""


class Metrics(_Strict):
    window_months: PositiveInt = 6
    average_divisor: Literal["window", "months_in_state"] = "window"
    forget_after_months: PositiveInt = 12


class Guards(_Strict):
    max_quarantine_ratio: Ratio = Decimal("0.01")
    max_missing_ratio: Ratio = Decimal("0.05")


class Eligibility(_Strict):
    """Allowed values per attribute; a subscriber is eligible when every listed attribute matches.

    A null value never matches, so ``brand = [...]`` also means "brand is not null".
    """

    customer_type: list[str] | None = None
    service_type: list[str] | None = None
    plan_category: list[str] | None = None
    payment_type: list[str] | None = None
    account_class: list[str] | None = None
    brand: list[str] | None = None
    status: list[str] | None = None
    real_name_verified: list[bool] | None = None

    @model_validator(mode="after")
    def _known_values(self) -> Eligibility:
        for attribute, allowed in ATTRIBUTE_VALUES.items():
            listed = getattr(self, attribute)
            for value in listed or ():
                if value not in allowed:
                    raise ValueError(f"{attribute}: unknown value {value!r} (allowed: {', '.join(allowed)})")
        return self

    def conditions(self) -> dict[str, list[str] | list[bool]]:
        """The listed attributes and their allowed values, in a stable order."""
        return {name: values for name, values in self.model_dump().items() if values is not None}


class _ProgramBase(_Strict):
    enabled: bool = True
    retention: Retention
    card_prefix: Annotated[str, Field(pattern=r"^[A-Z][A-Z0-9_]{0,15}$")]
    levels: Annotated[list[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")]], Field(min_length=1)]
    card_levels: list[str] = []
    eligible: Eligibility = Eligibility()

    @model_validator(mode="after")
    def _levels_known(self) -> _ProgramBase:
        if len(set(self.levels)) != len(self.levels):
            raise ValueError("levels: a level is listed twice")
        unknown = [level for level in self.card_levels if level not in self.levels]
        if unknown:
            raise ValueError(f"card_levels: unknown level {unknown[0]!r} (levels: {', '.join(self.levels)})")
        if self.card_levels and self.retention != "validity":
            raise ValueError('card_levels: cards need retention "validity" (a card has a validity window)')
        return self

    def _check_level_keys(self, key: str, mapping: dict[str, Any]) -> None:
        unknown = [level for level in mapping if level not in self.levels]
        if unknown:
            raise ValueError(f"{key}: unknown level {unknown[0]!r} (levels: {', '.join(self.levels)})")
        missing = [level for level in self.levels if level not in mapping]
        if missing:
            raise ValueError(f"{key}: no entry for level {missing[0]!r}")


def _check_increasing(key: str, levels: list[str], values: list[int | None]) -> None:
    """Thresholds must rise strictly from one level to the next (levels without one are skipped)."""
    previous: tuple[str, int] | None = None
    for level, value in zip(levels, values, strict=True):
        if value is None:
            continue
        if previous is not None and value <= previous[1]:
            raise ValueError(f"{key}: threshold of {level!r} does not increase over {previous[0]!r}")
        previous = (level, value)


class AverageBillLevel(_Strict):
    min_avg_billed: dict[str, Fen]
    customer_type: list[str] | None = None

    @model_validator(mode="after")
    def _all_services(self) -> AverageBillLevel:
        if set(self.min_avg_billed) != set(SERVICE_TYPES):
            raise ValueError(f"min_avg_billed: give exactly the service types {', '.join(SERVICE_TYPES)}")
        for value in self.customer_type or ():
            if value not in ATTRIBUTE_VALUES["customer_type"]:
                raise ValueError(f"customer_type: unknown value {value!r}")
        return self


class AverageBillProgram(_ProgramBase):
    """Levels on the window's average bill, by service type (China Unicom VIP)."""

    kind: Literal["average_bill"]
    thresholds: dict[str, AverageBillLevel]

    @model_validator(mode="after")
    def _thresholds(self) -> AverageBillProgram:
        self._check_level_keys("thresholds", self.thresholds)
        for service in SERVICE_TYPES:
            _check_increasing(
                f"thresholds.*.min_avg_billed.{service}",
                self.levels,
                [self.thresholds[level].min_avg_billed[service] for level in self.levels],
            )
        return self


class PaidSpendLevel(_Strict):
    min_cum_paid: Fen | None = None
    min_month_paid: Fen | None = None


class PaidSpendProgram(_ProgramBase):
    """Levels on cumulative and current-month payments (China Unicom star levels)."""

    kind: Literal["paid_spend"]
    thresholds: dict[str, PaidSpendLevel]

    @model_validator(mode="after")
    def _thresholds(self) -> PaidSpendProgram:
        self._check_level_keys("thresholds", self.thresholds)
        ordered = [self.thresholds[level] for level in self.levels]
        _check_increasing("thresholds.*.min_cum_paid", self.levels, [t.min_cum_paid for t in ordered])
        _check_increasing("thresholds.*.min_month_paid", self.levels, [t.min_month_paid for t in ordered])
        return self


class SpendBand(_Strict):
    up_to: Fen
    points: NonNegativeInt


class CreditScore(_Strict):
    brand_points: dict[str, NonNegativeInt]
    tenure_points: Annotated[list[NonNegativeInt], Field(min_length=1)]
    spend_bands: Annotated[list[SpendBand], Field(min_length=1)]
    spend_points_above: NonNegativeInt
    suspension_penalty: NonNegativeInt

    @model_validator(mode="after")
    def _ordered(self) -> CreditScore:
        for brand in self.brand_points:
            if brand not in ATTRIBUTE_VALUES["brand"]:
                raise ValueError(f"brand_points: unknown brand {brand!r}")
        bounds = [band.up_to for band in self.spend_bands]
        _check_increasing("spend_bands.up_to", [f"band {i}" for i in range(len(bounds))], list(bounds))
        return self


class CreditScoreProgram(_ProgramBase):
    """Levels on a credit score of brand, tenure, spend and suspensions (China Mobile stars)."""

    kind: Literal["credit_score"]
    score: CreditScore
    min_score: dict[str, int]

    @model_validator(mode="after")
    def _thresholds(self) -> CreditScoreProgram:
        self._check_level_keys("min_score", self.min_score)
        _check_increasing("min_score", self.levels, [self.min_score[level] for level in self.levels])
        return self


class PointsThresholdProgram(_ProgramBase):
    """Levels on the points balance (the one-time redemption threshold)."""

    kind: Literal["points_threshold"]
    min_points: dict[str, NonNegativeInt]

    @model_validator(mode="after")
    def _thresholds(self) -> PointsThresholdProgram:
        self._check_level_keys("min_points", self.min_points)
        _check_increasing("min_points", self.levels, [self.min_points[level] for level in self.levels])
        return self


AnyProgram = AverageBillProgram | PaidSpendProgram | CreditScoreProgram | PointsThresholdProgram
"""Every program kind; transforms ``match`` on it."""
Program = Annotated[AnyProgram, Field(discriminator="kind")]


class Rulebook(_Strict):
    """The whole rulebook. ``checksum`` is the SHA-256 of the file it was read from."""

    calendar: Calendar = Calendar()
    metrics: Metrics = Metrics()
    guards: Guards = Guards()
    programs: dict[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")], Program]
    checksum: str = ""

    @model_validator(mode="after")
    def _some_program(self) -> Rulebook:
        if not self.enabled_programs():
            raise ValueError("programs: no program is enabled")
        prefixes = [program.card_prefix for program in self.programs.values()]
        if len(set(prefixes)) != len(prefixes):
            raise ValueError("programs.*.card_prefix: two programs share a card prefix")
        return self

    def enabled_programs(self) -> dict[str, AnyProgram]:
        """The enabled programs by name, in rulebook order."""
        return {name: program for name, program in self.programs.items() if program.enabled}


DEFAULT_RULEBOOK = "default.toml"


def default_rulebook_path() -> Path:
    """The rulebook bundled with the package."""
    return Path(str(resources.files(__package__).joinpath(DEFAULT_RULEBOOK)))


_PROGRAM_KINDS = frozenset({"average_bill", "paid_spend", "credit_score", "points_threshold"})


def _describe(error: ValidationError, source: str) -> str:
    first = error.errors()[0]
    key = ".".join(str(part) for part in first["loc"] if str(part) not in _PROGRAM_KINDS)
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    return f"rulebook {source}: {key or '(top level)'}: {message}"


def parse_rulebook(text: str, *, source: str = "<text>") -> Rulebook:
    """Parse rulebook TOML text strictly; raises RulebookError naming the offending key."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RulebookError(f"rulebook {source}: not valid TOML: {exc}") from exc
    if "checksum" in raw:
        raise RulebookError(f"rulebook {source}: checksum: unknown key")
    raw["checksum"] = hashlib.sha256(text.encode()).hexdigest()
    try:
        return Rulebook.model_validate(raw)
    except ValidationError as exc:
        raise RulebookError(_describe(exc, source)) from exc


def load_rulebook(path: Path | None = None) -> Rulebook:
    """Read and parse a rulebook file (the bundled default when ``path`` is None)."""
    path = path or default_rulebook_path()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RulebookError(f"rulebook {path}: cannot read: {exc}") from exc
    return parse_rulebook(text, source=str(path))
