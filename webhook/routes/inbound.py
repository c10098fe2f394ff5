"""`POST /inbound/ses`: Amazon SNS messages for the SES events of the reply domain (emails received, bounces,
complaints). A verified notification is kept in the receiver's file, once per SNS MessageId, and answered 202;
processing it is the inbound worker's (woken through `app.state.inbound_wake` when one runs)."""

from __future__ import annotations

import json
import logging
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from webhook.deps import SettingsDep, SnsBody, SnsVerifierDep, StoreDep
from webhook.models import ErrorAnswer, Refused
from webhook.sns import MessageType, SnsMessage, SnsRejected

logger = logging.getLogger("upsell.receiver")

router = APIRouter()

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorAnswer, "description": "Not an SNS message: malformed JSON, a missing or invalid field, or"
          " headers that contradict the body"},
    403: {"model": ErrorAnswer, "description": "Not trusted: a topic not subscribed to, a signature version other"
          " than 2 (or 1 when UPSELL_SNS_ALLOW_SIGNATURE_V1), a stale or future Timestamp (`stale_message`), a"
          " certificate URL not of an SNS host, a certificate that does not chain to a trusted CA or is not"
          " SNS's, a signature that does not verify, or an email stored in an S3 bucket not in"
          " UPSELL_INBOUND_S3_BUCKETS (`bucket_not_allowed`)"},
    404: {"model": ErrorAnswer, "description": "Inbound messages are not enabled (no UPSELL_SNS_TOPIC_ARNS)"},
    413: {"model": ErrorAnswer, "description": "Body larger than UPSELL_SNS_MAX_BODY_BYTES"},
    415: {"model": ErrorAnswer, "description": "Content type other than text/plain or application/json"},
    502: {"model": ErrorAnswer, "description": "SNS did not accept the subscription confirmation (SNS sends it"
          " again)"},
    503: {"model": ErrorAnswer, "description": "The signing certificate cannot be fetched now (SNS delivers the"
          " message again)"},
}


InboundStatus = Literal["received", "duplicate", "confirmed", "ignored"]


class InboundAnswer(BaseModel):
    """What the receiver answers to an SNS message it verified."""

    message_id: str
    type: MessageType
    status: InboundStatus
    duplicate: bool = False


def s3_bucket_of(message: SnsMessage) -> str | None:
    """The S3 bucket an SES receipt says the email was stored in (an S3 action), or None for any other message."""
    try:
        event = json.loads(message.message)
    except ValueError:
        return None  # not an SES event: the inbound worker sets it aside
    receipt = event.get("receipt") if isinstance(event, dict) else None
    action = receipt.get("action") if isinstance(receipt, dict) else None
    if not isinstance(action, dict) or action.get("type") != "S3":
        return None
    return str(action.get("bucketName", ""))


def _answer(message: SnsMessage, status_code: int, status: InboundStatus, duplicate: bool = False) -> JSONResponse:
    answer = InboundAnswer(message_id=message.message_id, type=message.type, status=status, duplicate=duplicate)
    return JSONResponse(answer.model_dump(), status_code=status_code)


@router.post(
    "/inbound/ses",
    response_model=InboundAnswer,
    status_code=202,
    responses={200: {"model": InboundAnswer, "description": "A repeat of a notification already received, a"
                     " subscription confirmed, or an unsubscribe confirmation (ignored)"}, **ERRORS},
    openapi_extra={"requestBody": {"required": True, "content": {
        "text/plain": {"schema": {"type": "string", "description": "The SNS message as JSON text (SNS posts it"
                                  " as text/plain; charset=UTF-8)."}},
        "application/json": {"schema": SnsMessage.model_json_schema(by_alias=True)}}}},
    summary="Receive an Amazon SNS message (SES emails received, bounces, complaints)",
)
async def post_sns_message(request: Request, body: SnsBody, verifier: SnsVerifierDep, store: StoreDep,
                           settings: SettingsDep) -> JSONResponse:
    """An SNS message, verified as AWS documents (signature version 2, a certificate from an SNS host that chains
    to a trusted CA, a topic of UPSELL_SNS_TOPIC_ARNS, at most an hour old; an email stored in S3 only in a bucket
    of UPSELL_INBOUND_S3_BUCKETS). A new notification is kept and answered 202; its MessageId
    again (an SNS retry) 200 `duplicate`. A subscription confirmation is confirmed (200); an unsubscribe
    confirmation is ignored (200). Anything refused changes nothing."""
    try:
        message = await verifier.verify(body, header_type=request.headers.get("x-amz-sns-message-type"),
                                        header_topic=request.headers.get("x-amz-sns-topic-arn"))
        if message.type == "SubscriptionConfirmation":
            await verifier.confirm_subscription(message)
    except SnsRejected as exc:
        logger.warning("SNS message refused (%s %s): %s", exc.status_code, exc.reason, exc.detail)
        raise Refused(exc.status_code, exc.reason, exc.detail, field=exc.field) from None
    if message.type == "SubscriptionConfirmation":
        return _answer(message, 200, "confirmed")
    if message.type == "UnsubscribeConfirmation":
        logger.info("SNS unsubscribe confirmation for %s ignored", message.topic_arn)
        return _answer(message, 200, "ignored")
    bucket = s3_bucket_of(message)
    if bucket is not None and bucket not in settings.inbound_s3_buckets:
        # the worker would read the email from this bucket with the receiver's AWS credentials: only ours
        logger.warning("SNS notification %s refused: S3 bucket %r is not allowed", message.message_id, bucket[:100])
        raise Refused(403, "bucket_not_allowed", f"the email is in S3 bucket {bucket[:100]!r}, not one of "
                      "UPSELL_INBOUND_S3_BUCKETS", field="Message.receipt.action.bucketName")
    inserted = store.insert_inbound(message_id=message.message_id, topic_arn=message.topic_arn,
                                    message=message.message, sent_at=message.timestamp)
    if not inserted:
        return _answer(message, 200, "duplicate", duplicate=True)
    wake = getattr(request.app.state, "inbound_wake", None)
    if wake:
        wake()
    return _answer(message, 202, "received")
