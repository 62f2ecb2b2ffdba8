"""Target data: the common multiple-choice format, named tasks, prompts."""

from mashup.data.prompts import EncodedRequest, Formulation, PromptTemplate, Request, build_request, encode_requests
from mashup.data.schema import MCExample, carve_split, load_examples, sample
from mashup.data.target import TargetData, load_target, resolve_formulation

__all__ = ["EncodedRequest", "Formulation", "MCExample", "PromptTemplate", "Request", "TargetData", "build_request",
           "carve_split", "encode_requests", "load_examples", "load_target", "resolve_formulation", "sample"]
