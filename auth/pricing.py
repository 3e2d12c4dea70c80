"""Seed 000's price table: credits per successful job."""

BASE_CREDITS = 1
CLEAN_SCRATCHES_CREDITS = 1
FACE_REMASTER_CREDITS = 2


def job_price(*, clean_scratches: bool, face_remaster: bool) -> int:
    return BASE_CREDITS + CLEAN_SCRATCHES_CREDITS * clean_scratches + FACE_REMASTER_CREDITS * face_remaster
