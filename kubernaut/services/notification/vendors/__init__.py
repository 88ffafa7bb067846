"""Notification channels beyond email, each speaking its vendor's documented API: Slack,
Microsoft Teams, PagerDuty, Twilio SMS, ServiceNow, Jira and signed webhooks. Each module
has a pydantic config model (the channel's entry in the routing file) and a channel class
that implements `VendorChannel` (base.py)."""
