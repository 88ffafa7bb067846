"""ai_analysis: decides whether and how to remediate. The rules always decide; when models
are configured (KUBERNAUT_AI_PROVIDERS), one investigates and decides too, and the guard
weighs the two (reasoning.py)."""

from __future__ import annotations

import asyncio
import logging
import uuid

import grpc
from google.protobuf import json_format
from kubernaut.ai_analysis.v1 import ai_analysis_pb2, ai_analysis_pb2_grpc
from kubernaut.common.v1 import alert_pb2, remediation_pb2
from kubernaut.context_api.v1 import context_api_pb2
from kubernaut.context_api.v1.context_api_pb2_grpc import ContextAPIServiceStub
from kubernaut.executor.v1 import executor_pb2
from kubernaut.executor.v1.executor_pb2_grpc import ExecutorServiceStub
from kubernaut.storage.v1 import storage_pb2
from kubernaut.storage.v1.storage_pb2_grpc import StorageServiceStub
from kubernaut.workflow.v1 import workflow_pb2
from kubernaut.workflow.v1.workflow_pb2_grpc import WorkflowServiceStub

from kubernaut.runtime.interceptors import abort_invalid
from kubernaut.runtime.prometheus import PrometheusAPI
from kubernaut.runtime.server import Context, ServiceContext, ServiceSpec
from kubernaut.services.ai_analysis import contract, providers, reasoning, tools
from kubernaut.services.ai_analysis.history import HistoryUnavailable
from kubernaut.services.ai_analysis.rules import RulesSettings, analyze
from kubernaut.services.ai_analysis.settings import AnalysisSettings
from kubernaut.services.alerts import alert_expression
from kubernaut.services.context_api.client import resource_context
from kubernaut.services.incidents import FINAL_STATUSES

log = logging.getLogger(__name__)

# Model views of plans already under way, asked at once; more are not asked (a storm in an
# unguarded namespace must not queue work for a model that cannot change anything).
MAX_MODEL_VIEWS_WAITING = 8


class AIAnalysisServicer(ai_analysis_pb2_grpc.AIAnalysisServiceServicer):
    def __init__(
        self,
        context_api: ContextAPIServiceStub,
        workflow: WorkflowServiceStub,
        settings: RulesSettings,
        executor: ExecutorServiceStub | None = None,
        analyst: reasoning.ModelAnalyst | None = None,
        storage: StorageServiceStub | None = None,
        prometheus: PrometheusAPI | None = None,
        holmes_wait_seconds: float = 0.0,
    ) -> None:
        self.context_api = context_api
        self.workflow = workflow
        self.settings = settings
        self.executor = executor
        self.analyst = analyst
        self.storage = storage
        self.prometheus = prometheus
        self.holmes_wait_seconds = holmes_wait_seconds
        self._catalogue: list[executor_pb2.ActionDefinition] = []
        self._model_views: set[asyncio.Task[None]] = set()

    async def catalogue(self) -> list[executor_pb2.ActionDefinition]:
        """The executor's catalogue, read once (it changes only with the executor's
        version). Raises AioRpcError while the executor cannot answer."""
        if not self._catalogue and self.executor is not None:
            found = await self.executor.ListActions(executor_pb2.ListActionsRequest())
            self._catalogue = list(found.actions)
        return self._catalogue

    async def _with_model(
        self,
        incident: reasoning.Incident,
        rules: remediation_pb2.Analysis,
        incident_id: str,
        time_left: float | None,
    ) -> remediation_pb2.Analysis:
        """The rules' analysis weighed with a model's, when models are configured."""
        if self.analyst is None or not self.analyst.enabled:
            return rules
        try:
            catalogue = await self.catalogue()
        except grpc.aio.AioRpcError as error:
            return reasoning.rules_only(
                rules, f"the executor's catalogue could not be read ({error.code().name})"
            )
        targets = contract.targets_of(incident.subject, incident.evidence)

        async def read(ref: alert_pb2.ResourceRef) -> context_api_pb2.ResourceContext:
            found = await resource_context(self.context_api, ref)
            if found is None:
                raise tools.ToolRefused("context_api cannot describe it")
            return found

        async def history() -> context_api_pb2.IncidentHistory:
            found = await self._history(incident_id)
            if isinstance(found, HistoryUnavailable):
                raise tools.ToolRefused(f"history unavailable: {found}")
            return found

        toolbox = [tools.evidence_tool(read, targets), tools.history_tool(history)]
        log_tail = tools.log_tool(
            tools.context_api_logs(self.context_api), targets, incident.evidence
        )
        if log_tail is not None:
            toolbox.append(log_tail)
        expression = alert_expression(incident.alert)
        if self.prometheus is not None and expression:
            toolbox.append(tools.prometheus_tool(self.prometheus, expression))
        if self.prometheus is not None:
            # The same Prometheus scrapes the cluster: the workload's signals are there too.
            evidence = incident.evidence
            known = evidence is not None and evidence.HasField("workload")
            workload = evidence.workload if evidence is not None and known else incident.subject
            toolbox.append(tools.workload_metrics_tool(self.context_api, workload))
        return await self.analyst.analyse(incident, rules, catalogue, toolbox, time_left)

    def _ask_model_later(
        self, incident: reasoning.Incident, rules: remediation_pb2.Analysis, incident_id: str
    ) -> None:
        """Ask the model about a plan already under way, and record its view beside it."""
        if len(self._model_views) >= MAX_MODEL_VIEWS_WAITING:
            # A storm must not queue unbounded work on a model that cannot change anything.
            log.warning(
                "the model's view is not asked",
                extra={"why": f"{len(self._model_views)} views are already waiting"},
            )
            return
        view = asyncio.create_task(self._model_view(incident, rules, incident_id))
        self._model_views.add(view)
        view.add_done_callback(self._model_views.discard)

    async def _model_view(
        self, incident: reasoning.Incident, rules: remediation_pb2.Analysis, incident_id: str
    ) -> None:
        try:
            view = await self._with_model(incident, rules, incident_id, None)
            view.reasoning.asked_after_the_plan = True
            await self._record(incident_id, view)
        except Exception:  # a view for the record must never take the service down
            log.exception("the model's view failed")

    async def close(self) -> None:
        """Stop: views still waiting are dropped (nothing acts on them), then the models."""
        for view in list(self._model_views):
            view.cancel()
        await asyncio.gather(*self._model_views, return_exceptions=True)
        if self.analyst is not None:
            await self.analyst.close()
        if self.prometheus is not None:
            await self.prometheus.close()

    async def _knowledge(self, alert_name: str) -> context_api_pb2.AlertKnowledge | None:
        try:
            found = await self.context_api.GetAlertKnowledge(
                context_api_pb2.GetAlertKnowledgeRequest(alert_name=alert_name)
            )
        except grpc.aio.AioRpcError as error:
            if error.code() is grpc.StatusCode.NOT_FOUND:
                return None  # an alert outside the knowledge base is still analysed
            raise
        knowledge: context_api_pb2.AlertKnowledge = found.knowledge
        return knowledge

    async def _history(
        self, incident_id: str
    ) -> context_api_pb2.IncidentHistory | HistoryUnavailable:
        # History only weighs on a decision the evidence already supports, so an outage of
        # storage or effectiveness must not stop remediation: decide without it, and say so.
        try:
            found = await self.context_api.GetIncidentHistory(
                context_api_pb2.GetIncidentHistoryRequest(incident_id=incident_id)
            )
        except grpc.aio.AioRpcError as error:
            log.warning(
                "no history for the analysis",
                extra={"code": error.code().name, "why": error.details()},
            )
            return HistoryUnavailable(f"{error.code().name}: {error.details()}"[:256])
        history: context_api_pb2.IncidentHistory = found.history
        return history

    async def _investigation(
        self, incident: storage_pb2.Incident
    ) -> context_api_pb2.Investigation | str:
        """HolmesGPT's investigation (through context_api), or why there is none ("" when
        it is not asked). Bounded by KUBERNAUT_AI_HOLMES_WAIT_SECONDS: the analysis goes on
        without it rather than wait."""
        wait = self.holmes_wait_seconds
        if not wait:
            return ""
        try:
            found = await self.context_api.Investigate(
                context_api_pb2.InvestigateRequest(alert=incident.alert, resource=incident.subject),
                timeout=wait,
            )
        except grpc.aio.AioRpcError as error:
            why = (
                f"no answer within {wait:g}s"
                if error.code() is grpc.StatusCode.DEADLINE_EXCEEDED
                else f"{error.code().name}: {error.details()}"
            )
            log.info("no HolmesGPT investigation", extra={"why": why})
            return why[:300]
        investigation: context_api_pb2.Investigation = found.investigation
        return investigation

    async def _evidence(
        self, request: ai_analysis_pb2.AnalyzeIncidentRequest
    ) -> context_api_pb2.ResourceContext | None:
        """The evidence the alert processor read moments ago, when it sent it; else read
        now."""
        if request.HasField("evidence"):
            return request.evidence
        return await resource_context(self.context_api, request.incident.subject)

    async def _record(self, incident_id: str, analysis: remediation_pb2.Analysis) -> None:
        """Put the analysis on the record. Best effort: an audit write that fails must not
        stop the remediation, so the analysis then goes to the log in full instead."""
        if self.storage is None:
            return
        try:
            await self.storage.RecordAnalysis(
                storage_pb2.RecordAnalysisRequest(
                    analysis_id=str(uuid.uuid4()), incident_id=incident_id, analysis=analysis
                )
            )
        except grpc.aio.AioRpcError as error:
            log.warning(
                "analysis not recorded",
                extra={
                    "code": error.code().name,
                    "why": error.details(),
                    "analysis": json_format.MessageToJson(analysis, indent=None),
                },
            )

    async def AnalyzeAlert(
        self, request: ai_analysis_pb2.AnalyzeAlertRequest, context: Context
    ) -> ai_analysis_pb2.AnalyzeAlertResponse:
        if request.alert.status != alert_pb2.ALERT_STATUS_FIRING:
            await abort_invalid(context, "alert.status", "only firing alerts are analysed")
        knowledge = await self._knowledge(request.alert.name)
        return ai_analysis_pb2.AnalyzeAlertResponse(
            analysis=analyze(request.alert, request.subject, knowledge, self.settings)
        )

    async def AnalyzeIncident(
        self, request: ai_analysis_pb2.AnalyzeIncidentRequest, context: Context
    ) -> ai_analysis_pb2.AnalyzeIncidentResponse:
        incident = request.incident
        if incident.alert.status != alert_pb2.ALERT_STATUS_FIRING:
            await abort_invalid(context, "incident.alert.status", "only firing alerts are analysed")
        if incident.status in FINAL_STATUSES or incident.HasField("alert_resolved_at"):
            # A fix decided now would act on a problem that is over.
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"incident {incident.incident_id} is "
                f"{storage_pb2.IncidentStatus.Name(incident.status)}"
                + (", its alert resolved" if incident.HasField("alert_resolved_at") else "")
                + "; closed or resolved incidents are not analysed",
            )
        # Independent reads: one round trip's wait instead of four.
        knowledge, evidence, history, investigated = await asyncio.gather(
            self._knowledge(incident.alert.name),
            self._evidence(request),
            self._history(incident.incident_id),
            self._investigation(incident),
        )
        rules = analyze(
            incident.alert, incident.subject, knowledge, self.settings, evidence, history
        )
        investigation = None
        if isinstance(investigated, context_api_pb2.Investigation):
            investigation = investigated
            rules.reasons.append(investigation_reason(investigated))
        elif investigated:
            rules.reasons.append(f"HolmesGPT not heard ({investigated}); analysed without it")
        asked = reasoning.Incident(
            incident.alert, incident.subject, evidence, knowledge, investigation
        )
        analyst = self.analyst
        model_later = analyst is not None and analyst.cannot_change(rules)
        if analyst is not None and model_later:
            analysis = analyst.rules_first(rules)
        else:
            analysis = await self._with_model(
                asked, rules, incident.incident_id, _time_left(context)
            )
        if analysis.HasField("recommendation"):
            # Who chose the action travels with it: the approval policy weighs it.
            analysis.recommendation.source = analysis.analyzer[:64]
        response = ai_analysis_pb2.AnalyzeIncidentResponse(analysis=analysis)
        await self._record(incident.incident_id, analysis)
        if analysis.decision == remediation_pb2.DECISION_REMEDIATE:
            created = await self.workflow.CreateWorkflow(
                workflow_pb2.CreateWorkflowRequest(
                    incident_id=incident.incident_id,
                    alert=incident.alert,
                    recommendation=analysis.recommendation,
                )
            )
            response.workflow_id = created.workflow.workflow_id
        if model_later:
            self._ask_model_later(asked, rules, incident.incident_id)
        log.info(
            "analysed",
            extra={
                "decision": remediation_pb2.Decision.Name(analysis.decision),
                "action": analysis.recommendation.action.WhichOneof("params") or "",
                "workflow_id": response.workflow_id,
                "analyzer": analysis.analyzer,
                "model_guard": analysis.reasoning.guard,
            },
        )
        return response


def investigation_reason(investigation: context_api_pb2.Investigation) -> str:
    """HolmesGPT's conclusion as one reason of the analysis: its first lines, and what it
    looked at."""
    gist = " ".join(
        line.strip("# ").strip() for line in investigation.analysis.splitlines() if line.strip()
    )
    gist = gist if len(gist) <= 400 else gist[:400] + "…"
    tools = f"; it used {', '.join(list(investigation.tools)[:5])}" if investigation.tools else ""
    return f"HolmesGPT's investigation ({investigation.latency_seconds:.0f}s{tools}): {gist}"


# What the rest of AnalyzeIncident needs after the model: recording the analysis and
# creating the workflow.
_RESERVE_SECONDS = 10.0


def _time_left(context: Context) -> float | None:
    """The caller's deadline less the reserve; None when the caller set none."""
    remaining = context.time_remaining()
    if remaining is None:
        return None
    return float(remaining) - _RESERVE_SECONDS


async def build(ctx: ServiceContext) -> ServiceSpec:
    settings = AnalysisSettings()
    analyst = reasoning.ModelAnalyst(
        [(ps, providers.build(ps)) for ps in settings.providers], settings
    )
    if analyst.enabled:
        log.info(
            "models configured",
            extra={"providers": [f"{ps.name} ({ps.kind} {ps.model})" for ps in settings.providers]},
        )
    servicer = AIAnalysisServicer(
        ctx.clients.stub(ContextAPIServiceStub),
        ctx.clients.stub(WorkflowServiceStub),
        RulesSettings(),
        ctx.clients.stub(ExecutorServiceStub),
        analyst,
        ctx.clients.stub(StorageServiceStub),
        PrometheusAPI(settings.prometheus_url, tools.PROMETHEUS_TIMEOUT_SECONDS)
        if settings.prometheus_url
        else None,
        settings.holmes_wait_seconds,
    )
    return ServiceSpec(servicer, on_stop=[servicer.close])
