-- 0002: who asked for each workflow, and each person's approval decision.
--
-- Approvers are authenticated principals as `kind:name` ("person:alice@example.com"), never
-- names typed in a request. One decision per person and workflow; the plan says how many
-- different people must approve (WorkflowPlan.approvals_required).

ALTER TABLE workflow.workflows ADD COLUMN requested_by text NOT NULL DEFAULT '';

CREATE TABLE workflow.approvals (
    workflow_id uuid        NOT NULL REFERENCES workflow.workflows ON DELETE CASCADE,
    approver    text        NOT NULL CHECK (approver <> ''),
    decision    text        NOT NULL CHECK (decision IN ('APPROVE', 'REJECT')),
    reason      text        NOT NULL DEFAULT '',
    decided_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workflow_id, approver)
);
