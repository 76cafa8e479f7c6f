# ruff: noqa: E501  (long template strings are data; wrapping them would hurt readability)
"""The text of rewardgate's sample dataset: slot pools, support intents with their good answers, and the
pieces of each kind of worse answer. Data only, written for this project; scripts/make_sample_data.py
combines it into trainer/samples/support_pairs.jsonl.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

SEED = 20240611  # shared with make_sample_data.py: the whole dataset depends on this one number

# ---------------------------------------------------------------- slot pools

_order_rng = random.Random(SEED + 1)
ORDERS = sorted({f"QB-{_order_rng.randrange(100000, 999999)}" for _ in range(40)})
PRODUCTS = [
    "Slate 10 tablet",
    "Slate Pro 12 tablet",
    "Inkwell stylus",
    "Folio keyboard case",
    "Dock Mini charging stand",
    "travel sleeve",
    "65 W USB-C power adapter",
]
DATES = [
    "March 3",
    "March 18",
    "April 2",
    "April 11",
    "April 27",
    "May 6",
    "May 19",
    "June 1",
    "June 14",
    "June 30",
]
AMOUNTS = ["$12.00", "$24.00", "$36.00", "$72.00", "$149.00", "$288.00", "$59.99", "$329.00"]
LAST4 = ["4417", "0923", "7781", "3056", "5520", "8842"]
PAYMENTS = [
    "Visa card ending in 4417",
    "Mastercard ending in 0923",
    "PayPal account",
    "Amex card ending in 1009",
    "debit card ending in 7781",
]
EMAILS = [
    "maria.lopez@example.com",
    "j.chen@example.org",
    "sam.okafor@example.net",
    "priya.n@example.com",
    "tom.berg@example.org",
    "lea.martin@example.net",
    "akira.sato@example.com",
    "dana.cohen@example.org",
]
PHONES = ["iPhone 15", "Pixel 8", "Galaxy S24", "OnePlus 12", "iPhone 13"]
PLANS = ["Starter", "Team", "Business"]
PLAN_LIMITS = {"Starter": "120", "Team": "600", "Business": "2,000"}
SEATS = ["4", "9", "15", "23", "40"]
COUNTRIES = [
    "Canada",
    "Japan",
    "Australia",
    "Brazil",
    "Mexico",
    "Norway",
    "South Korea",
    "India",
    "New Zealand",
    "Switzerland",
]
EU_COUNTRIES = ["Germany", "France", "Spain", "the Netherlands", "Ireland", "Italy", "Poland", "Sweden"]
COMPANIES = [
    "Brightline Studio",
    "Osprey Analytics",
    "Kestrel Design",
    "Lumen & Oak",
    "Fernhill Consulting",
    "Tidewater Labs",
]
MONTHS = ["January", "February", "March", "April", "May", "June"]
CITIES = ["Leeds", "Portland", "Austin", "Lyon", "Toronto", "Melbourne", "Denver", "Bristol"]
ENDPOINTS = ["/v2/notes", "/v2/projects", "/v2/search", "/v2/users", "/v2/webhooks"]
ACTIONS = [
    "export a notebook to PDF",
    "attach an image to a note",
    "share a project with a guest",
    "sync after being offline",
    "search inside a large notebook",
]
BUG_ERRORS = [
    "E-1042: sync conflict",
    "E-2201: unexpected error",
    "E-3107: renderer timeout",
    "E-4410: storage unavailable",
]
PLATFORMS = ["Windows 11", "macOS Sonoma", "Android 14", "iPadOS 17"]
VERSIONS = ["4.2.1", "4.3.0", "4.3.2", "4.4.0"]
WORKSPACES = [
    "Harbor Product Team",
    "Thesis notes",
    "Family Recipes",
    "Lab Notebook",
    "Client Projects",
    "Marketing Q3",
]
CODES = ["SPRING15", "WELCOME10", "STUDENT20", "BUNDLE25", "FRIENDS5"]
PROMO_ERRORS = {
    "This code has expired": "the promotion behind the code has ended, so it can no longer be applied",
    "Code not valid for items in your cart": "the code excludes at least one item in your cart, in this case the {product}",
    "Minimum order value not reached": "the cart total is below the code's minimum of $50 before tax and shipping",
    "Code already used on this account": "the code is single-use and has already been redeemed on your account",
}
DAMAGES = ["cracked screen", "bent corner", "broken hinge", "scratched back panel", "dented casing"]
REASONS = [
    "it doesn't suit how I work",
    "I ordered the wrong model",
    "it isn't what I expected",
    "I no longer need it",
]
TRIES = ["two", "three", "four"]

# Which pool a fact slot draws its wrong value from (wrong_facts rejections).
POOL_OF: dict[str, list[str]] = {
    "order": ORDERS,
    "product": PRODUCTS,
    "date": DATES,
    "amount": AMOUNTS,
    "last4": LAST4,
    "payment": PAYMENTS,
    "email": EMAILS,
    "new_email": EMAILS,
    "phone": PHONES,
    "plan": PLANS,
    "old_plan": PLANS,
    "new_plan": PLANS,
    "seats": SEATS,
    "country": COUNTRIES,
    "eu_country": EU_COUNTRIES,
    "company": COMPANIES,
    "month": MONTHS,
    "city": CITIES,
    "endpoint": ENDPOINTS,
    "action": ACTIONS,
    "error": BUG_ERRORS,
    "platform": PLATFORMS,
    "version": VERSIONS,
    "workspace": WORKSPACES,
    "code": CODES,
    "damage": DAMAGES,
    "limit": list(PLAN_LIMITS.values()),
}

# ---------------------------------------------------------------- intents


@dataclass
class Intent:
    name: str
    category: str  # selects the generic (specifics-ignoring) answers
    topic: str  # a short phrase used by the dismissive / rude / apologetic answers
    slots: dict[str, list[str]]
    user: list[str]
    chosen: list[str]  # helpful answers, deliberately of different lengths
    rude: list[str]  # blaming answers that still use the specifics
    facts: tuple[str, ...]  # slots a wrong_facts answer may change
    derive: Callable[[dict[str, str]], None] | None = None
    opener: str = ""  # first user turn when the prompt is a short multi-turn chat
    extra: dict[str, str] = field(default_factory=dict)


def _derive_plan_change(s: dict[str, str]) -> None:
    order = PLANS.index(s["old_plan"])
    if PLANS.index(s["new_plan"]) <= order:
        s["new_plan"] = PLANS[order + 1] if order + 1 < len(PLANS) else PLANS[-1]
        if s["new_plan"] == s["old_plan"]:
            s["old_plan"] = PLANS[0]


def _derive_limit(s: dict[str, str]) -> None:
    s["limit"] = PLAN_LIMITS[s["plan"]]


def _derive_promo(s: dict[str, str]) -> None:
    s["promo_reason"] = PROMO_ERRORS[s["promo_error"]].format(product=s["product"])


def _derive_new_email(s: dict[str, str]) -> None:
    if s["new_email"] == s["email"]:
        s["new_email"] = EMAILS[(EMAILS.index(s["email"]) + 3) % len(EMAILS)]


INTENTS: list[Intent] = [
    Intent(
        name="order_status",
        category="orders",
        topic="order tracking",
        slots={"order": ORDERS, "product": PRODUCTS, "date": DATES},
        facts=("order", "product", "date"),
        opener="Hi, I have a question about an order.",
        user=[
            "Where is my order {order}? I ordered the {product} on {date} and haven't had any shipping update.",
            "Hi, can you check the status of order {order}? It's a {product} I bought on {date}.",
            "My {product} (order {order}) still hasn't shipped and I placed it on {date}. What's going on?",
        ],
        chosen=[
            "You can follow order {order} under Account > Orders > {order}. The tracking link for the {product} appears there, and in a shipping email, as soon as it leaves the warehouse.",
            "Orders placed on {date} normally ship within 2 business days. Open Account > Orders > {order} to see the current status of the {product}; once it ships, the tracking number is added there. If it still says 'Processing' after 3 business days, reply with {order} and we'll ask the warehouse to check it.",
            "Here's how to check order {order}: sign in, go to Account > Orders and select {order}. 'Processing' means the {product} is being packed, 'Shipped' comes with a carrier tracking link, and 'Delivered' shows the drop-off time. Orders placed on {date} usually ship within 2 business days, so if the status hasn't moved after 3 business days, reply here with {order} and we'll chase the warehouse for you.",
        ],
        rude=[
            "Order {order} shows its status in your account, like every order does. If you'd looked at Account > Orders before writing in about your {product}, you wouldn't need to ask.",
        ],
    ),
    Intent(
        name="refund_request",
        category="orders",
        topic="returns",
        slots={"order": ORDERS, "product": PRODUCTS, "date": DATES, "reason": REASONS},
        facts=("order", "product", "date"),
        user=[
            "I'd like a refund for the {product} from order {order}. It arrived on {date} and {reason}.",
            "Can I return the {product}? Order {order}, delivered {date}. Honestly {reason}.",
            "Refund request: order {order}, {product}, received {date}. Reason: {reason}.",
        ],
        chosen=[
            "Yes. The {product} from order {order} arrived on {date}, so it's inside the 30-day return window. Choose 'Return an item' under Account > Orders > {order} to get a prepaid label.",
            "You can return it for a full refund: order {order} was delivered on {date}, within our 30-day window. Go to Account > Orders > {order}, pick the {product}, choose 'Return an item' and print the prepaid label. The refund goes back to your original payment method within 5-10 business days of the warehouse receiving it.",
            "The {product} from order {order} qualifies for a full refund, since it arrived on {date} and returns are accepted for 30 days after delivery. Open Account > Orders > {order}, choose 'Return an item', select a reason and print the prepaid label. Pack the {product} with its accessories, drop it at any carrier point, and you'll get an email when the refund is issued to your original payment method, usually 5-10 business days after it reaches us.",
        ],
        rude=[
            "You could have started the return yourself in Account > Orders > {order}; it's not complicated. The {product} arrived {date}, so yes, it's within 30 days. Next time, check the returns page before messaging us.",
        ],
    ),
    Intent(
        name="refund_timing",
        category="billing",
        topic="refunds",
        slots={"order": ORDERS, "amount": AMOUNTS, "date": DATES, "payment": PAYMENTS},
        facts=("order", "amount", "date", "payment"),
        opener="Hello, I'm still waiting on a refund.",
        user=[
            "The refund of {amount} for order {order} was issued on {date}, but I don't see it on my {payment} yet. When will it arrive?",
            "Order {order}: you confirmed a {amount} refund on {date}. Nothing on my {payment} so far. Where is it?",
            "How long does a refund take? I got the refund confirmation for order {order} ({amount}) on {date} and my {payment} still shows nothing.",
        ],
        chosen=[
            "The {amount} refund for order {order} was sent on {date}. It usually takes 5-10 business days to appear on a {payment}, so please allow until then before checking again.",
            "The {amount} refund for order {order} left us on {date}. Banks and PayPal usually post refunds within 5-10 business days, so it should show on your {payment} within that window. If it hasn't after 10 business days, ask your bank about the refund using the reference on the confirmation email for {order}.",
            "Your refund of {amount} for order {order} was issued on {date}. The money is on its way, but it typically takes 5-10 business days before it shows on a {payment}; some banks first show it as a pending credit. If nothing has appeared 10 business days after {date}, reply here and we'll send you the acquirer reference number (ARN) so your bank can trace the {amount} payment.",
        ],
        rude=[
            "Refunds take 5-10 business days; that's written on the confirmation you got for order {order}. The {amount} left us on {date}, so it's with your bank now, not us. Please read the email before chasing.",
        ],
    ),
    Intent(
        name="password_reset",
        category="account",
        topic="password resets",
        slots={"email": EMAILS, "tries": TRIES},
        facts=("email",),
        user=[
            "I requested a password reset for {email} but the email never arrived. I've tried {tries} times.",
            "Password reset emails aren't reaching me ({email}). Tried {tries} times already. Help?",
            "I can't log in and the 'forgot password' email doesn't come. My account is {email}.",
        ],
        chosen=[
            "Reset emails come from no-reply@quillbox.example; check the spam folder of {email}. Each new request cancels the previous link, so use only the newest email, within 60 minutes.",
            "Reset emails for {email} are sent from no-reply@quillbox.example and usually arrive within 5 minutes. Look in spam or promotions, and add the sender to your contacts. Since each request cancels the earlier link, open only the newest one; it expires after 60 minutes.",
            "Let's get the reset email to {email}. It comes from no-reply@quillbox.example, so check spam, promotions and any filtering rules first. Every new request cancels the previous link, so after several tries only the newest email works, for 60 minutes. If nothing arrives within 15 minutes, make sure {email} is the address on the account (you may have signed up with another one or with Google sign-in), then reply here and we'll send the link manually.",
        ],
        rude=[
            "The reset email was sent to {email}, which means it's in your spam folder. Requesting it {tries} times just cancels the earlier links, so stop clicking the button and check your inbox properly.",
        ],
    ),
    Intent(
        name="two_factor",
        category="account",
        topic="two-factor sign-in",
        slots={"email": EMAILS, "phone": PHONES},
        facts=("email", "phone"),
        opener="I'm locked out of my account.",
        user=[
            "I got a new {phone} and my Quillbox authenticator codes are gone. How do I sign in to {email}?",
            "Lost my old phone, now on a {phone}. Two-factor codes don't work for {email}. What now?",
            "My old phone is gone and I'm on a {phone} now. How do I get two-factor working again for {email}?",
        ],
        chosen=[
            "On the sign-in page choose 'Use a backup code' and enter one of the 10 codes you saved when you turned on two-factor. Then go to Settings > Security > Two-factor and scan the new QR code with your {phone}.",
            "Sign in to {email} with one of your backup codes ('Use a backup code' on the sign-in page). Then open Settings > Security > Two-factor, remove the old device and scan the QR code with the authenticator app on your {phone}. If you have no backup codes, choose 'Can't access your codes?' to start account recovery.",
            "You can still get into {email}: on the sign-in page choose 'Use a backup code' and enter one of the 10 codes saved when two-factor was turned on. Once in, open Settings > Security > Two-factor, remove the old device and scan the new QR code with your {phone}. Without backup codes, pick 'Can't access your codes?' instead; recovery needs an identity check and takes up to 48 hours, after which two-factor is reset.",
        ],
        rude=[
            "This is what backup codes are for. You were told to save them when you set up two-factor on {email}. Use one, then set up your {phone} in Settings > Security, and keep the codes somewhere safe this time.",
        ],
    ),
    Intent(
        name="double_charge",
        category="billing",
        topic="billing",
        slots={"plan": PLANS, "amount": AMOUNTS, "date": DATES, "last4": LAST4},
        facts=("plan", "amount", "date", "last4"),
        user=[
            "I was charged {amount} twice on {date} for my {plan} plan. Card ending {last4}. Please fix this.",
            "Why are there two {amount} charges from Quillbox on {date}? We're on {plan}, card ending {last4}.",
            "Double charge! {plan} subscription, {amount} billed twice on {date} to the card ending {last4}.",
        ],
        chosen=[
            "Check Settings > Billing > Invoices: if there's only one {plan} invoice for {date}, the second {amount} is a pending authorisation that your bank drops within 3-5 business days.",
            "The second {amount} charge on {date} is most often a pending card authorisation, not a real payment. Settings > Billing > Invoices shows what was actually billed for the {plan} plan: with one invoice, the hold disappears from the card ending {last4} in 3-5 business days. With two invoices, reply with both numbers and we'll refund one.",
            "Let's sort out the {amount} charged twice on {date}. Open Settings > Billing > Invoices. If there's a single {plan} invoice for that date, the duplicate is only a pending authorisation and falls off the card ending {last4} within 3-5 business days. If you see two paid invoices, reply with both invoice numbers and we'll refund the extra {amount} to the same card right away; it then takes 5-10 business days to appear.",
        ],
        rude=[
            "You weren't charged twice; one of those {amount} lines on {date} is an authorisation hold, which any bank statement makes obvious. Look at the {plan} invoices in Settings > Billing before assuming we made a mistake.",
        ],
    ),
    Intent(
        name="plan_change",
        category="billing",
        topic="plan changes",
        slots={"old_plan": PLANS, "new_plan": PLANS, "seats": SEATS},
        facts=("old_plan", "new_plan", "seats"),
        derive=_derive_plan_change,
        user=[
            "How do I move our workspace from {old_plan} to {new_plan}? We have {seats} people.",
            "We'd like to upgrade from {old_plan} to {new_plan} for our {seats} users. What happens to billing?",
            "Can I switch our {seats}-person team from the {old_plan} plan to {new_plan} mid-month?",
        ],
        chosen=[
            "An owner or billing admin can switch from {old_plan} to {new_plan} in Settings > Billing > Change plan. It applies right away to all {seats} members.",
            "Yes, mid-cycle is fine. In Settings > Billing > Change plan, pick {new_plan} and confirm. All {seats} members move from {old_plan} immediately, and you're charged only the prorated difference for the rest of the current period.",
            "Switching from {old_plan} to {new_plan} takes a minute: an owner or billing admin opens Settings > Billing > Change plan, selects {new_plan} and confirms the seat count ({seats}). The upgrade is immediate, and the first invoice charges only the prorated difference for the remaining days of this billing period. Notes, projects and integrations stay exactly as they are.",
        ],
        rude=[
            "The Change plan button in Settings > Billing is hard to miss. Click it, choose {new_plan} instead of {old_plan}, confirm your {seats} seats. That's the whole process, so there was no need to open a ticket.",
        ],
    ),
    Intent(
        name="cancel_subscription",
        category="billing",
        topic="cancellations",
        slots={"plan": PLANS, "date": DATES},
        facts=("plan", "date"),
        user=[
            "Please cancel my {plan} subscription before it renews on {date}.",
            "I want to stop paying for {plan}. The next renewal is {date}. How do I cancel?",
            "If I cancel my {plan} plan now, do I lose access immediately or on {date} when it renews?",
        ],
        chosen=[
            "Cancel in Settings > Billing > Cancel subscription any time before {date} and you won't be charged again. You keep {plan} features until {date}.",
            "You can cancel yourself in Settings > Billing > Cancel subscription. Do it before {date} and there's no further charge. Access to {plan} features continues until {date}; after that the workspace moves to the Free plan, and every note stays readable and exportable.",
            "Cancelling doesn't cut you off early. Go to Settings > Billing > Cancel subscription and confirm; as long as it's before {date}, the renewal won't be charged. You keep everything in {plan} until {date}, then the workspace drops to the Free plan: notes stay available to read and export, and paid-only features such as version history become read-only.",
        ],
        rude=[
            "Cancelling is self-service and the button is in Settings > Billing, as the help page says. Do it before {date} if you don't want {plan} to renew. We can't be expected to remember your renewal date for you.",
        ],
    ),
    Intent(
        name="international_shipping",
        category="shipping",
        topic="shipping",
        slots={"product": PRODUCTS, "country": COUNTRIES},
        facts=("product", "country"),
        user=[
            "Do you ship the {product} to {country}? How long does it take and will I pay customs?",
            "I live in {country}. Can I order the {product} from your store, and what about import fees?",
            "Shipping question: {product} to {country}. Delivery time and duties?",
        ],
        chosen=[
            "Yes, the {product} ships to {country}. Standard delivery takes 7-14 business days after dispatch, and import duties are charged at checkout, so nothing is due on arrival.",
            "We do ship the {product} to {country}. Standard international delivery takes 7-14 business days and express 3-5. Duties and taxes for {country} are calculated at checkout and paid upfront, so the courier won't ask for anything at the door.",
            "Yes, you can order the {product} for delivery to {country}. At checkout you'll see two options: standard (7-14 business days after dispatch) and express (3-5 business days). Import duties and taxes for {country} are calculated and charged at checkout, so there are no customs fees on delivery. Every international parcel is tracked, and the tracking link is emailed once it ships.",
        ],
        rude=[
            "The shipping page lists {country} like every other country we serve, so a quick look would have answered this. Yes, the {product} ships there, 7-14 business days, duties paid at checkout.",
        ],
    ),
    Intent(
        name="address_change",
        category="orders",
        topic="delivery addresses",
        slots={"order": ORDERS, "city": CITIES},
        facts=("order", "city"),
        opener="Hi, I made a mistake with my order.",
        user=[
            "I just placed order {order} with my old address. Can I change delivery to my new address in {city}?",
            "Wrong shipping address on order {order}! It should go to {city}. Can you update it?",
            "Is it possible to redirect order {order} to an address in {city}?",
        ],
        chosen=[
            "Yes, while order {order} hasn't shipped: open Account > Orders > {order}, choose 'Edit address' and enter the {city} address.",
            "As long as order {order} hasn't been packed, you can change it yourself: Account > Orders > {order} > Edit address, then enter the {city} address and save. The option disappears once packing starts, usually within 2 hours of ordering.",
            "You can update it if order {order} hasn't been packed yet: go to Account > Orders > {order}, choose 'Edit address', enter the new address in {city} and save; the confirmation email updates straight away. If the option is gone, the order is already with the warehouse, so reply here with the full {city} address and we'll ask the carrier to redirect the parcel.",
        ],
        rude=[
            "You should double-check the address before paying; that's what the review screen is for. If order {order} hasn't shipped, you can change it to {city} under Account > Orders yourself.",
        ],
    ),
    Intent(
        name="api_unauthorized",
        category="developer",
        topic="API authentication",
        slots={"endpoint": ENDPOINTS, "date": DATES},
        facts=("endpoint", "date"),
        user=[
            "Our integration started getting '401 Unauthorized' from {endpoint} this morning. The key was created on {date}. Nothing changed on our side.",
            "Every call to {endpoint} now returns 401. We use an API key made on {date}. Was something changed?",
            "Why would {endpoint} return 401 Unauthorized with a key that worked until today? Key created {date}.",
        ],
        chosen=[
            "A 401 from {endpoint} means the key wasn't accepted. Check Settings > Developer > API keys: if the key from {date} shows 'Revoked', create a new one and update your integration.",
            "A 401 on {endpoint} means the key was rejected, usually because it was revoked or rotated by another admin, or because the header isn't 'Authorization: Bearer <key>'. Look up the key created on {date} in Settings > Developer > API keys; if it's revoked, generate a new key and deploy it.",
            "401 Unauthorized from {endpoint} means the request reached us but the key was refused. The usual causes: another admin revoked or rotated the key, the key belongs to a different workspace, or the header isn't exactly 'Authorization: Bearer <key>'. Open Settings > Developer > API keys and check the key created on {date}; the audit log shows who revoked it and when. If it's revoked, create a new key and update your integration's secret.",
        ],
        rude=[
            "A 401 on {endpoint} means your key is wrong, full stop. The key from {date} was almost certainly revoked by someone on your own team, so check Settings > Developer > API keys before blaming our API.",
        ],
    ),
    Intent(
        name="api_rate_limit",
        category="developer",
        topic="API limits",
        slots={"endpoint": ENDPOINTS, "plan": PLANS},
        facts=("plan", "limit", "endpoint"),
        derive=_derive_limit,
        user=[
            "We keep hitting '429 Too Many Requests' on {endpoint}. We're on the {plan} plan. What's the limit?",
            "What's the API rate limit for {plan}? Our sync job gets 429s from {endpoint}.",
            "Getting 429 errors from {endpoint} during our nightly import ({plan} workspace). How do we avoid them?",
        ],
        chosen=[
            "The {plan} plan allows {limit} API requests per minute per workspace. On a 429 from {endpoint}, wait for the number of seconds in the Retry-After header before retrying.",
            "On {plan} the limit is {limit} requests per minute per workspace. A 429 from {endpoint} means you went over it; the response carries a Retry-After header with the seconds to wait. Back off on 429 instead of retrying at once, and fetch 100 items per call with page_size.",
            "The {plan} plan allows {limit} requests per minute per workspace, shared by all keys. A 429 on {endpoint} means the job exceeded that; the Retry-After header says how many seconds to pause. For a nightly import: request page_size=100 to cut the number of calls, spread requests evenly instead of in bursts, and retry with exponential backoff. If you still need more, a higher plan raises the limit.",
        ],
        rude=[
            "A 429 means your job sends too many requests; that's not a bug on our side. {plan} gets {limit} per minute, it's in the docs. Respect the Retry-After header on {endpoint} and the errors go away.",
        ],
    ),
    Intent(
        name="bug_report",
        category="bugs",
        topic="app problems",
        slots={"action": ACTIONS, "error": BUG_ERRORS, "platform": PLATFORMS, "version": VERSIONS},
        facts=("action", "error", "platform", "version"),
        opener="The app keeps failing for me.",
        user=[
            "The app fails every time I {action} on {platform}. Version {version}. Error: '{error}'.",
            "Bug: when I try to {action}, I get '{error}'. I'm on {platform}, app version {version}.",
            "Can't {action} anymore. '{error}' on {platform} (Quillbox {version}). Any fix?",
        ],
        chosen=[
            "Please update from {version} to the latest release and try to {action} again. If '{error}' still appears, use Help > Send diagnostics on {platform} so we can see where it fails.",
            "First update Quillbox from {version} to the newest version on {platform}, then sign out and back in to refresh the local cache. If you still get '{error}' when you {action}, open Help > Send diagnostics and mention this conversation; the log shows us exactly what fails.",
            "Let's narrow down '{error}'. Step one: update from {version} to the latest release for {platform}, since several fixes in that area shipped recently. Step two: sign out and back in, which rebuilds the local cache. If you still can't {action}, open Help > Send diagnostics and reference this conversation; the report includes logs from the failed attempt, and we'll reply with a fix or workaround.",
        ],
        rude=[
            "You're on {version}, which is out of date, so of course you get '{error}'. Update the app on {platform} like the banner keeps asking you to, then try to {action} again.",
        ],
    ),
    Intent(
        name="email_change",
        category="account",
        topic="account settings",
        slots={"email": EMAILS, "new_email": EMAILS},
        facts=("email", "new_email"),
        derive=_derive_new_email,
        user=[
            "How do I change my login email from {email} to {new_email}?",
            "I'm leaving my job; please switch my account email {email} to {new_email}.",
            "Can I update the email on my account? Old: {email}. New: {new_email}.",
        ],
        chosen=[
            "Go to Settings > Account > Email, enter {new_email} and confirm with your password. The change applies once you click the link we send to {new_email}.",
            "Open Settings > Account > Email, enter {new_email} and confirm with your password. We email a confirmation link to {new_email} (valid 24 hours) and a notice to {email}; the switch happens when you click the link. Notes, plan and billing are unaffected.",
            "You can change it yourself: Settings > Account > Email, type {new_email} and confirm with your current password. A confirmation link goes to {new_email} and a security notice to {email}; the login email switches as soon as you open the link, which stays valid for 24 hours. Since you're leaving that job, do it before you lose access to {email}, or account recovery will be slower.",
        ],
        rude=[
            "This is a basic account setting. Settings > Account > Email, type {new_email}, confirm. Support doesn't change emails by hand, so there's no point sending {email} requests here.",
        ],
    ),
    Intent(
        name="export_delete",
        category="account",
        topic="data export",
        slots={"workspace": WORKSPACES},
        facts=("workspace",),
        user=[
            "Before I delete my account I want to export everything from the workspace '{workspace}'. How?",
            "How do I download all my notes in '{workspace}' and then close my account?",
            "I want a full export of '{workspace}' and then my account deleted. What's the process?",
        ],
        chosen=[
            "Export first: Settings > Workspace > Export data emails you a ZIP of '{workspace}'. Then use Settings > Account > Delete account.",
            "Go to Settings > Workspace > Export data; we build a ZIP of all notes in '{workspace}' (Markdown plus attachments) and email a download link valid for 7 days. Once you've saved it, delete the account under Settings > Account > Delete account.",
            "Do it in two steps. 1) Settings > Workspace > Export data creates a ZIP of everything in '{workspace}': notes as Markdown, attachments and comments, with a download link emailed to you and valid for 7 days. 2) After downloading, go to Settings > Account > Delete account. Deletion becomes permanent after a 14-day grace period, during which signing in cancels it.",
        ],
        rude=[
            "Export is under Settings > Workspace > Export data, clearly labelled. Download '{workspace}' there and then delete your account yourself. Don't expect us to restore anything afterwards if you skip the export.",
        ],
    ),
    Intent(
        name="invoice_vat",
        category="billing",
        topic="invoices",
        slots={"company": COMPANIES, "eu_country": EU_COUNTRIES, "month": MONTHS},
        facts=("company", "eu_country", "month"),
        user=[
            "Our invoices don't show our VAT number. The company is {company} in {eu_country}. Can you reissue the {month} invoice?",
            "Need the {month} invoice corrected with our VAT ID: {company}, registered in {eu_country}.",
            "How do I add a VAT number for {company} ({eu_country}) and get a corrected {month} invoice?",
        ],
        chosen=[
            "Add the VAT ID in Settings > Billing > Company details. Then open the {month} invoice and click 'Regenerate with current details' to get a corrected PDF for {company}.",
            "Enter {company}'s VAT number and {eu_country} billing address in Settings > Billing > Company details; it appears on every invoice from then on. For {month}, open Invoices, select it and click 'Regenerate with current details'. The corrected PDF keeps the same number and amount.",
            "Two steps. First, in Settings > Billing > Company details, enter the VAT number and the registered address of {company} in {eu_country}; we validate it against VIES, and future invoices show it automatically. Second, open Invoices, select {month} and click 'Regenerate with current details'. The new PDF replaces the old one with the same invoice number and amount, and reverse-charge wording is added where it applies.",
        ],
        rude=[
            "Invoices show whatever company details you entered, and {company} never entered a VAT number. Add it in Settings > Billing yourself and regenerate the {month} invoice. That's on your side, not ours.",
        ],
    ),
    Intent(
        name="damaged_item",
        category="orders",
        topic="damaged deliveries",
        slots={"order": ORDERS, "product": PRODUCTS, "damage": DAMAGES},
        facts=("order", "product", "damage"),
        user=[
            "My {product} from order {order} arrived with a {damage}. What can I do?",
            "Order {order} came today and the {product} has a {damage}. I want a replacement.",
            "The {product} in order {order} is damaged ({damage}). How do I get this fixed?",
        ],
        chosen=[
            "We'll replace it at no cost. Go to Account > Orders > {order} > Report a problem, choose 'Arrived damaged' and upload a photo of the {damage}.",
            "That shouldn't happen, and we'll replace it free of charge. Under Account > Orders > {order} choose Report a problem > Arrived damaged and add a photo of the {damage} and the box. A new {product} ships within 2 business days, with a prepaid label for the damaged one.",
            "A {damage} on arrival is covered, so you'll get a free replacement. Open Account > Orders > {order}, choose Report a problem > Arrived damaged, and upload photos of the {damage} and the packaging. The replacement {product} ships within 2 business days and you don't need to wait for the return first: the prepaid label for the damaged unit is emailed separately. Prefer a refund? Pick that option on the same form.",
        ],
        rude=[
            "Damage in transit is the carrier's fault, not ours. If you really want a new {product}, report the {damage} under Account > Orders > {order} and send photos, and we'll see.",
        ],
    ),
    Intent(
        name="promo_code",
        category="orders",
        topic="promo codes",
        slots={"code": CODES, "product": PRODUCTS, "promo_error": list(PROMO_ERRORS)},
        facts=("code", "product"),
        derive=_derive_promo,
        user=[
            "The code {code} doesn't work at checkout for the {product}. It says '{promo_error}'.",
            "Why won't {code} apply? I'm buying the {product} and get '{promo_error}'.",
            "Promo {code} rejected with '{promo_error}' when ordering a {product}. Can you help?",
        ],
        chosen=[
            "'{promo_error}' means {promo_reason}. The {product} can still be ordered at the regular price, or with another current code.",
            "The message '{promo_error}' means {promo_reason}. Codes can't be overridden at checkout, but the offers page lists every promotion currently valid for the {product}, so another one may apply.",
            "'{promo_error}' is the checkout telling you that {promo_reason}. We can't force {code} onto the order, but two things may help: the offers page shows every promotion currently valid for the {product}, and if you believe {code} should have worked, reply with where you got it and we'll check the terms.",
        ],
        rude=[
            "The checkout message '{promo_error}' is self-explanatory. Read the terms of {code} before trying to use it on a {product}; we don't make exceptions because someone didn't check.",
        ],
    ),
]

# ---------------------------------------------------------------- answers without specifics

SYSTEM_PROMPTS = [
    "You are Quillbox's customer-support assistant. Quillbox sells a note-taking app on Starter, Team and Business plans, and tablets and accessories in its web store. Be accurate, specific and friendly.",
    "You answer customer questions for Quillbox support. Give concrete steps and keep answers short.",
    "You are a helpful support agent for the Quillbox app and store.",
]

MULTI_TURN_REPLY = [
    "Of course. Could you share the details, such as the order number or the exact message you see?",
    "Happy to help. What exactly is happening?",
]

DISMISSIVE = [
    "We can't help with that.",
    "That's not something support handles.",
    "I'm not able to help with {topic} here.",
    "There's nothing I can do about that.",
    "Please don't contact support about this. Check the website.",
    "I won't be able to assist with this one. Closing the conversation now.",
    "Unfortunately, {topic} isn't something I can answer through this chat. You'll need to find the answer elsewhere.",
    "I've read your message, but this isn't a request we take through support. There's no further action I can take on it, so I'm marking this conversation as resolved.",
    "This isn't something I'm going to look into. If it still matters to you, try again some other time.",
    "Sorry, no. Questions about {topic} aren't handled by this team, and I can't tell you who handles them.",
]

GENERIC = {
    "orders": [
        "Thanks for reaching out about your order! You can find information about orders, shipping and returns in our Help Center. Most questions are answered there, and if not, our team is happy to help.",
        "Order questions are very common. In general, orders are processed and shipped as quickly as possible, and you can view your orders in your account at any time.",
        "We're glad to help with your purchase. Our store policies cover orders, payments, deliveries, returns and exchanges, and are explained in detail on our website. Please review them, and feel free to get back to us with any further questions you might have.",
    ],
    "billing": [
        "Billing questions can usually be resolved from the Billing section of your account settings. For more information, see our Help Center articles on payments and plans.",
        "Thanks for your billing question! Quillbox offers several plans to suit different needs, and you can manage your subscription and payment methods from your account. Let us know if there's anything else!",
        "We understand that billing matters are important. Our billing system handles subscriptions, payments, refunds and invoices automatically, and details about all of these can be found in the Billing area of your account and in our Help Center. If anything looks unusual, please review your account information carefully.",
    ],
    "account": [
        "For account and security questions, we recommend keeping your account details up to date and visiting our Help Center, which covers sign-in and settings.",
        "Thanks for contacting us about your account. Your account settings let you manage your profile, security and preferences. We recommend using a strong password and keeping your contact information current.",
        "Account security is very important to us. Quillbox offers several tools to help you manage your account, including profile settings, security options and privacy controls. You can find step-by-step guides for all of these in our Help Center, which is updated regularly.",
    ],
    "developer": [
        "Our API documentation covers authentication, limits and error handling. We recommend reviewing the docs and following best practices for integrations.",
        "Thanks for building with Quillbox! The API lets you work with notes, projects and users. Please make sure your integration follows our developer guidelines and uses a supported version of the API.",
        "API errors can have many causes, including configuration, network issues or usage patterns. We suggest reviewing your integration, checking the developer documentation and testing your requests carefully. Our developer portal has guides, reference pages and examples for common scenarios.",
    ],
    "bugs": [
        "Thanks for your feedback! We're always working to improve the app. Make sure you're using a supported device, and check our Help Center for troubleshooting tips.",
        "Sorry to hear the app isn't working as expected. Issues like this can happen for a variety of reasons. Restarting your device often helps.",
        "We appreciate you letting us know. Our engineering team continuously monitors the app's performance and releases updates regularly to improve stability and add new features. In the meantime, our Help Center has general troubleshooting steps that resolve most common problems.",
    ],
    "shipping": [
        "We ship to many locations worldwide. Delivery times and costs vary by destination. Please check our shipping information page for more details.",
        "Thanks for your interest in our products! Shipping options depend on your location and the items you order, and all the relevant information is shown during checkout.",
        "International orders are an important part of our business, and we work with trusted carriers to deliver around the world. Delivery times, fees and any local requirements differ from country to country, so we recommend reviewing the shipping policy on our website before you place an order.",
    ],
}
GENERIC_ANY = [
    "Thanks for contacting Quillbox support! We're here to help with any questions about our products and services. Please check our Help Center or reply with more details.",
    "Thank you for your message. Our team handles many requests like this every day, and most are resolved by following the guidance in our Help Center.",
]

RUDE_ANY = [
    "You could have found this yourself in the Help Center. Please read it before writing to support about {topic}.",
    "If you had followed the instructions the first time, you wouldn't be having this problem.",
    "This is user error. Try again and pay attention to what the screen tells you.",
    "We get this exact question every day, and the answer is on our website. It's not our job to read the documentation for you, so please look there first next time.",
    "Honestly, most problems with {topic} are caused by customers not doing things properly. Go back, do it again carefully, and it'll work.",
]

APOLOGY_OPENERS = [
    "I'm so sorry to hear about this!",
    "Oh no, I'm truly sorry for the trouble with {topic}.",
    "First of all, please accept my sincerest apologies.",
    "I'm really, really sorry that you're dealing with this.",
]
APOLOGY_FILLERS = [
    "I completely understand how frustrating issues with {topic} can be, and I want you to know that your experience matters a great deal to us.",
    "We truly apologise for any inconvenience this may have caused, and we appreciate your patience more than we can say.",
    "Please know that we take every concern like this very seriously and that customer satisfaction is our top priority.",
    "I'm sorry again that you had to reach out about this at all; it's never the experience we want anyone to have.",
    "Situations like this are exactly what we want to avoid, and I apologise on behalf of the whole team.",
    "Thank you so much for bringing this to our attention and for being so understanding while we look into things.",
    "I can only imagine how stressful this must be, and I sincerely regret that it happened.",
    "Your message is important to us, and I want to make sure you feel heard and valued as a customer.",
]
APOLOGY_CLOSERS = [
    "Again, I'm so sorry, and thank you for your patience!",
    "Once more, my deepest apologies for all of this.",
    "We truly appreciate you and apologise again for the inconvenience.",
]

OFF_TOPIC_LEADS = ["", "", "Happy to help! ", "Sure. ", "Good question. "]
