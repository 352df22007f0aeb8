"""Sentences to speak for the synthetic speech corpus, and the same text for the word n-gram LM.

Owns two sources of English text and the sentence-level hold-out:

* a seeded template grammar of what people say to a voice assistant that also captions images and
  checks symptoms: commands, questions, picture descriptions, symptom reports, everyday statements,
  numbers, times and dates (all spelled out), and dictionary-word look-ups that bring in the long tail
  of the vocabulary (``/usr/share/dict/words``, Debian ``wamerican``);
* real sentences from Debian's ``fortune`` files (``/usr/share/games/fortunes``).

Every :class:`Prompt` carries two forms of one sentence: ``spoken`` (capitals and punctuation, which
give the synthesizers their prosody) and ``text`` = ``normalize_text(spoken)`` (the transcript). A
sentence is kept only when both forms say the same words: no digits, abbreviations or all-caps tokens,
which a synthesizer would expand differently from ``normalize_text``.

Used by ``nui data speech`` (:mod:`training.speech_ctc.corpus`); try it with
``python -m training.speech_ctc.text 20`` to print twenty sentences.
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from models.ctc_text import normalize_text

logger = logging.getLogger(__name__)

MIN_WORDS = 3
MAX_WORDS = 20
FORTUNES_DIR = Path("/usr/share/games/fortunes")
DICT_WORDS = Path("/usr/share/dict/words")


@dataclass(frozen=True)
class Prompt:
    """One sentence: what the synthesizer reads and what the transcript says."""

    text: str  # normalize_text(spoken): the transcript and the LM text
    spoken: str  # the same words with capitals and punctuation, for the synthesizer's prosody
    source: str  # "grammar", "fortune" or "dictionary"

    @property
    def sentence_id(self) -> str:
        """Stable id of the transcript, e.g. "grammar-3fa2c19b0d" (same text, same id, any run)."""
        return f"{self.source}-{hashlib.blake2b(self.text.encode(), digest_size=5).hexdigest()}"


@dataclass(frozen=True)
class SentenceSplit:
    """Prompts held out by sentence: no transcript appears in two splits."""

    train: list[Prompt]
    dev: list[Prompt]
    test: list[Prompt]


# --------------------------------------------------------------------------------------------------
# Numbers, times and dates, spelled out the way people say them.

_ONES = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
    "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen",
)
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
_ORDINAL_IRREGULAR = {"one": "first", "two": "second", "three": "third", "five": "fifth",
                      "eight": "eighth", "nine": "ninth", "twelve": "twelfth"}


def number_words(n: int, *, british_and: bool = False) -> str:
    """English words for 0 <= n < 10**9: 342 -> "three hundred forty two" (or "... and forty two")."""
    if not 0 <= n < 10**9:
        raise ValueError(f"number_words supports 0 <= n < 10**9, got {n}")
    if n < 20:
        return _ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens] + (f" {_ONES[ones]}" if ones else "")
    if n < 1000:
        hundreds, rest = divmod(n, 100)
        head = f"{_ONES[hundreds]} hundred"
        if not rest:
            return head
        return f"{head} {'and ' if british_and else ''}{number_words(rest)}"
    for scale, name in ((10**6, "million"), (1000, "thousand")):
        if n >= scale:
            high, rest = divmod(n, scale)
            head = f"{number_words(high, british_and=british_and)} {name}"
            if not rest:
                return head
            joiner = " and " if british_and and rest < 100 else " "
            return head + joiner + number_words(rest, british_and=british_and)
    raise AssertionError("unreachable")


def ordinal_words(n: int) -> str:
    """English ordinal for 1 <= n < 10**9: 23 -> "twenty third"."""
    words = number_words(n).split()
    last = words[-1]
    if last in _ORDINAL_IRREGULAR:
        words[-1] = _ORDINAL_IRREGULAR[last]
    elif last.endswith("y"):
        words[-1] = last[:-1] + "ieth"
    else:
        words[-1] = last + "th"
    return " ".join(words)


def year_words(year: int) -> str:
    """How a year is read: 1984 -> "nineteen eighty four", 2005 -> "two thousand and five"."""
    if 2000 <= year < 2010:
        return "two thousand" + (f" and {_ONES[year - 2000]}" if year > 2000 else "")
    high, low = divmod(year, 100)
    if low == 0:
        return f"{number_words(high)} hundred"
    low_words = number_words(low) if low >= 10 else f"oh {_ONES[low]}"
    return f"{number_words(high)} {low_words}"


def _time_words(rng: random.Random) -> str:
    hour = rng.randint(1, 12)
    minute = rng.choice((0, 0, 5, 10, 15, 20, 30, 30, 40, 45, 50, rng.randint(1, 59)))
    h = number_words(hour)
    minute_words = number_words(minute) if minute >= 10 else f"oh {_ONES[minute]}"
    forms = [f"{h} o'clock"] if minute == 0 else [f"{h} {minute_words}"]
    if minute == 30:
        forms.append(f"half past {h}")
    elif minute == 15:
        forms.append(f"quarter past {h}")
    elif minute == 45:
        forms.append(f"quarter to {number_words(hour % 12 + 1)}")
    elif minute in (5, 10, 20):
        forms.append(f"{number_words(minute)} past {h}")
    text = rng.choice(forms)
    if rng.random() < 0.4:
        text += " " + rng.choice(("in the morning", "in the afternoon", "in the evening", "at night"))
    return rng.choice((text, text, text, "noon", "midnight")) if minute == 0 else text


def _duration_words(rng: random.Random) -> str:
    unit, low, high = rng.choice((("second", 5, 90), ("minute", 1, 90), ("minute", 2, 20), ("hour", 1, 12),
                                  ("day", 1, 14), ("week", 1, 8), ("month", 1, 6)))
    n = rng.randint(low, high)
    if n == 1:
        return rng.choice((f"a {unit}", f"one {unit}")).replace("a hour", "an hour")
    special = {"hour": ("an hour and a half", "two and a half hours", "a couple of hours"),
               "day": ("a couple of days", "a few days"), "week": ("a couple of weeks", "a few weeks")}
    if unit in special and rng.random() < 0.2:
        return rng.choice(special[unit])
    return f"{number_words(n)} {unit}s"


def _date_words(rng: random.Random) -> str:
    month = rng.choice(MONTHS)
    day = rng.randint(1, 28 if month == "February" else 30)
    return rng.choice((f"{month} {ordinal_words(day)}", f"the {ordinal_words(day)} of {month}"))


def _money_words(rng: random.Random) -> str:
    currency, minor = rng.choice((("dollars", "cents"), ("dollars", "cents"), ("pounds", "pence"),
                                  ("euros", "cents")))
    amount = rng.choice((rng.randint(2, 99), rng.randint(100, 2000), rng.randint(2, 20)))
    if rng.random() < 0.35:
        return f"{number_words(amount)} {currency} and {number_words(rng.randint(2, 99))} {minor}"
    return f"{number_words(amount, british_and=rng.random() < 0.5)} {currency}"


def _digits_words(rng: random.Random, n_digits: int) -> str:
    zero = rng.choice(("zero", "oh"))
    return " ".join(zero if d == 0 else _ONES[d] for d in (rng.randint(0, 9) for _ in range(n_digits)))


def _temperature_words(rng: random.Random) -> str:
    if rng.random() < 0.5:
        return f"{number_words(rng.randint(36, 40))} point {_ONES[rng.randint(0, 9)]} degrees"
    return f"{number_words(rng.randint(97, 104), british_and=rng.random() < 0.5)} degrees"


def _count_words(rng: random.Random) -> str:
    return rng.choice(("two", "three", "four", "five", "six", "a few", "several", "a couple of", "many"))


# --------------------------------------------------------------------------------------------------
# Vocabulary: curated category lists. American spelling throughout, so the LM sees one spelling.

NAMES = (
    "Aaron", "Abigail", "Adam", "Adrian", "Aisha", "Alan", "Albert", "Alex", "Alice", "Amanda", "Amelia",
    "Amy", "Andrew", "Angela", "Anna", "Anthony", "Arthur", "Ava", "Barbara", "Ben", "Benjamin", "Beth",
    "Brian", "Bruce", "Carl", "Carlos", "Caroline", "Catherine", "Charles", "Charlotte", "Chloe", "Chris",
    "Claire", "Daniel", "David", "Diana", "Diego", "Dorothy", "Dylan", "Edward", "Eleanor", "Elena",
    "Eli", "Elizabeth", "Ella", "Emily", "Emma", "Eric", "Ethan", "Eva", "Fatima", "Frank", "Gabriel",
    "George", "Grace", "Hannah", "Harry", "Helen", "Henry", "Isaac", "Isabella", "Jack", "Jacob", "James",
    "Jane", "Jason", "Jennifer", "Jessica", "Joe", "John", "Jonathan", "Jose", "Joseph", "Joshua",
    "Julia", "Karen", "Kate", "Kevin", "Laura", "Leo", "Liam", "Lily", "Linda", "Lisa", "Logan", "Lucas",
    "Lucy", "Luis", "Maria", "Mark", "Martha", "Mary", "Matthew", "Maya", "Megan", "Mia", "Michael",
    "Michelle", "Mohammed", "Nancy", "Natalie", "Nathan", "Nicole", "Noah", "Oliver", "Olivia", "Omar",
    "Oscar", "Patrick", "Paul", "Peter", "Priya", "Rachel", "Rebecca", "Richard", "Robert", "Rosa",
    "Ryan", "Samuel", "Sara", "Sarah", "Scott", "Sophia", "Sophie", "Stephen", "Steve", "Susan", "Thomas",
    "Tim", "Tom", "Victor", "Victoria", "William", "Zoe",
)
RELATIVES = (
    "mom", "dad", "my mother", "my father", "my sister", "my brother", "my wife", "my husband", "my son",
    "my daughter", "my grandmother", "my grandfather", "grandma", "grandpa", "my aunt", "my uncle",
    "my cousin", "my friend", "my best friend", "my boss", "my neighbor", "my roommate", "my partner",
    "my teacher", "my doctor", "the baby", "my little brother", "my older sister", "my coworker",
)
CITIES = (
    "Amsterdam", "Athens", "Atlanta", "Austin", "Bangkok", "Barcelona", "Berlin", "Boston", "Brussels",
    "Cairo", "Calgary", "Chicago", "Copenhagen", "Dallas", "Denver", "Detroit", "Dublin", "Edinburgh",
    "Florence", "Glasgow", "Helsinki", "Houston", "Istanbul", "Lisbon", "Liverpool", "London", "Madrid",
    "Manchester", "Melbourne", "Miami", "Milan", "Montreal", "Moscow", "Munich", "Nairobi", "Naples",
    "Oslo", "Ottawa", "Paris", "Philadelphia", "Phoenix", "Portland", "Prague", "Rome", "Seattle",
    "Singapore", "Stockholm", "Sydney", "Toronto", "Vancouver", "Venice", "Vienna", "Warsaw", "Zurich",
    "New York", "Los Angeles", "San Francisco", "San Diego", "New Orleans", "Las Vegas", "Cape Town",
    "Mexico City", "Hong Kong", "Buenos Aires", "Rio de Janeiro", "Salt Lake City",
)
COUNTRIES = (
    "Argentina", "Australia", "Austria", "Belgium", "Brazil", "Canada", "Chile", "China", "Colombia",
    "Croatia", "Denmark", "Egypt", "England", "Finland", "France", "Germany", "Ghana", "Greece",
    "Iceland", "India", "Indonesia", "Ireland", "Italy", "Jamaica", "Japan", "Kenya", "Korea", "Mexico",
    "Morocco", "Nepal", "Nigeria", "Norway", "Peru", "Poland", "Portugal", "Scotland", "Spain", "Sweden",
    "Switzerland", "Thailand", "Turkey", "Vietnam", "Wales", "New Zealand", "South Africa",
    "the United States", "the Philippines", "the Netherlands",
)
LANGUAGES = ("French", "Spanish", "German", "Italian", "Portuguese", "Japanese", "Chinese", "Korean",
             "Arabic", "Hindi", "Russian", "Dutch", "Swedish", "Greek", "Turkish", "Polish")
VENUES = (
    "the supermarket", "the pharmacy", "the library", "the airport", "the train station", "the office",
    "the gym", "the park", "the beach", "the hospital", "the bank", "the post office", "the school",
    "the museum", "the bakery", "the dentist", "the mall", "the cinema", "the hardware store",
    "the bus stop", "the farmers market", "the coffee shop", "the gas station", "the zoo", "the clinic",
    "the swimming pool", "the bookstore", "the city center", "the stadium", "the vet", "the garden center",
    "the laundromat", "the pizza place", "the hotel", "the church", "the playground", "the car wash",
)
ROOMS = ("kitchen", "living room", "bedroom", "bathroom", "garage", "hallway", "office", "basement",
         "dining room", "nursery", "attic", "porch", "garden", "guest room", "laundry room", "kids room")
APPLIANCES = (
    "lights", "lamp", "heater", "fan", "air conditioner", "television", "radio", "coffee machine",
    "dishwasher", "washing machine", "oven", "thermostat", "vacuum cleaner", "speakers", "kettle",
    "ceiling fan", "porch light", "humidifier", "dryer", "microwave", "projector", "night light",
)
FOODS = (
    "apples", "bananas", "bread", "butter", "cheese", "chicken", "rice", "pasta", "eggs", "milk", "coffee",
    "tea", "orange juice", "yogurt", "cereal", "tomatoes", "potatoes", "onions", "garlic", "carrots",
    "broccoli", "spinach", "lettuce", "strawberries", "blueberries", "grapes", "lemons", "avocados", "salmon",
    "tuna", "beef", "soup", "honey", "peanut butter", "jam", "flour", "sugar", "salt", "pepper", "olive oil",
    "chocolate", "cookies", "ice cream", "pizza", "noodles", "beans", "lentils", "mushrooms", "cucumbers",
    "peppers", "oranges", "pears", "peaches", "watermelon", "pineapple", "almonds", "walnuts", "crackers",
    "sausages", "bacon", "tofu", "oatmeal", "pancakes", "sandwiches", "muffins", "bagels", "cream",
    "sparkling water", "lemonade", "granola", "popcorn", "dumplings", "curry", "salad", "toast",
)
DISHES = ("lasagna", "banana bread", "pancakes", "chicken soup", "a chocolate cake", "guacamole",
          "fried rice", "mashed potatoes", "a vegetable curry", "pizza dough", "apple pie", "hummus",
          "tomato sauce", "scrambled eggs", "a smoothie", "pad thai", "meatballs", "a risotto", "chili")
MEALS = ("breakfast", "lunch", "dinner", "a snack", "dessert", "brunch")
ANIMALS = (
    "dog", "cat", "horse", "cow", "sheep", "goat", "pig", "rabbit", "bird", "duck", "goose", "chicken",
    "parrot", "owl", "eagle", "pigeon", "seagull", "swan", "fox", "wolf", "bear", "deer", "squirrel",
    "mouse", "elephant", "giraffe", "zebra", "lion", "tiger", "monkey", "kangaroo", "camel", "penguin",
    "dolphin", "whale", "turtle", "frog", "snake", "lizard", "butterfly", "bee", "spider", "puppy", "kitten",
    "hamster", "goldfish", "donkey", "llama", "panda", "koala", "crab", "octopus", "raccoon", "hedgehog",
)
OBJECTS = (
    "chair", "table", "umbrella", "bicycle", "car", "bus", "truck", "boat", "train", "airplane", "kite",
    "ball", "book", "bottle", "cup", "mug", "plate", "bowl", "vase", "clock", "lamp", "phone", "laptop",
    "keyboard", "backpack", "suitcase", "hat", "shoe", "jacket", "scarf", "bench", "fence", "door",
    "window", "mirror", "pillow", "blanket", "basket", "box", "bucket", "candle", "guitar", "piano",
    "camera", "teddy bear", "toy car", "skateboard", "surfboard", "tennis racket", "frisbee", "pizza",
    "cake", "sandwich", "banana", "apple", "orange", "flower", "tree", "house", "bridge", "tower",
    "sign", "traffic light", "fire hydrant", "mailbox", "wheelchair", "tractor", "motorcycle", "helmet",
    "key", "wallet", "watch", "ring", "necklace", "pencil", "notebook", "envelope", "letter", "map",
    "tent", "ladder", "hammer", "broom", "towel", "toothbrush", "sofa", "bed", "shelf", "rug", "sink",
    "refrigerator", "stove", "kettle", "teapot", "spoon", "fork", "knife", "glass", "jar", "balloon",
    "trophy", "crown", "drum", "violin", "trumpet", "globe", "telescope", "rocket", "statue", "fountain",
)
COLORS = ("red", "blue", "green", "yellow", "orange", "purple", "pink", "brown", "black", "white", "gray",
          "golden", "silver", "dark blue", "light blue", "dark green", "bright red", "pale yellow",
          "navy blue", "beige", "turquoise", "maroon", "lime green", "cream colored")
SIZES = ("small", "large", "tiny", "huge", "little", "big", "tall", "short", "long", "giant", "narrow",
         "wide")
QUALITIES = (
    "old", "new", "shiny", "broken", "wooden", "plastic", "metal", "wet", "dirty", "clean", "fluffy",
    "striped", "spotted", "empty", "full", "round", "square", "heavy", "soft", "rusty", "colorful", "dusty",
    "bright", "dark", "antique", "modern", "cozy", "messy", "tidy", "fancy", "simple", "muddy", "sunny",
    "crowded", "quiet", "busy", "tiny", "beautiful", "ugly", "strange", "famous", "cheap", "expensive",
)
LOCATIONS = (
    "on the grass", "on a wooden table", "in the snow", "on the beach", "on a busy street", "in a kitchen",
    "next to a window", "under a tree", "in front of a building", "on a plate", "in a field", "near a river",
    "on a sofa", "in a garden", "on the sidewalk", "in a parking lot", "on a shelf", "at the park",
    "in the water", "on a bed", "by the lake", "on a mountain trail", "in a forest", "on a bridge",
    "at the airport", "in a classroom", "on a desk", "in the rain", "at sunset", "under a blue sky",
    "on a kitchen counter", "in a crowded market", "on a train platform", "next to a fence", "in the sand",
    "on a carpet", "in a living room", "near the door", "on top of a hill", "in a small boat",
)
PREPOSITIONS = ("on", "under", "next to", "behind", "in front of", "near", "beside", "above", "below",
                "inside", "on top of", "to the left of", "to the right of", "leaning against")
PEOPLE = (
    "a man", "a woman", "a boy", "a girl", "a child", "an old man", "an old woman", "a young woman",
    "a young man", "a baby", "a chef", "a doctor", "a police officer", "a farmer", "a skateboarder",
    "a surfer", "a group of people", "two children", "a family", "a couple", "a tourist", "a nurse",
    "a little girl", "a little boy", "a student", "a soccer player", "a cyclist", "a firefighter",
    "a teenager", "a mother and her son", "two friends", "a crowd of people", "a musician",
)
PEOPLE_ACTIONS = (
    "riding a bicycle", "holding an umbrella", "walking a dog", "eating a sandwich", "reading a book",
    "playing the guitar", "talking on the phone", "sitting on a bench", "flying a kite", "throwing a ball",
    "cooking dinner", "crossing the street", "waiting for a bus", "taking a picture", "carrying a box",
    "drinking coffee", "playing tennis", "riding a horse", "swimming", "jogging", "smiling at the camera",
    "wearing a red hat", "looking out of a window", "cutting a cake", "painting a wall", "washing dishes",
    "pushing a stroller", "standing in line", "dancing", "laughing", "sleeping", "surfing a wave",
    "building a sandcastle", "feeding the ducks", "climbing a tree", "typing on a laptop",
)
ANIMAL_ACTIONS = ("sitting", "standing", "running", "sleeping", "eating", "jumping", "playing", "lying down",
                  "resting", "drinking water", "looking at the camera", "walking", "hiding", "swimming",
                  "chasing a ball", "rolling")
SYMPTOMS = (
    "a headache", "a fever", "a sore throat", "a cough", "a dry cough", "a runny nose", "a stuffy nose",
    "chest pain", "back pain", "nausea", "dizziness", "a rash", "shortness of breath", "a stomach ache",
    "diarrhea", "vomiting", "chills", "fatigue", "muscle aches", "joint pain", "ear pain", "blurred vision",
    "itchy eyes", "watery eyes", "sneezing", "heartburn", "constipation", "insomnia", "a stiff neck",
    "swollen ankles", "numbness in my hands", "a toothache", "loss of appetite", "night sweats",
    "palpitations", "a migraine", "cramps", "bloating", "a nosebleed", "hives", "wheezing",
    "a loss of smell", "a loss of taste", "tingling in my feet", "pain when I swallow", "a burning feeling",
    "lower back pain", "a swollen knee", "trouble sleeping", "a high temperature", "body aches",
    "a pounding heart", "blood in my urine", "weight loss", "dry skin", "hair loss", "a bad cough",
)
BODY_PARTS = ("head", "back", "chest", "stomach", "throat", "left knee", "right knee", "left shoulder",
              "right shoulder", "neck", "ankle", "wrist", "lower back", "ear", "left eye", "right eye",
              "tooth", "foot", "hand", "elbow", "hip", "jaw", "arm", "leg", "finger", "toe", "side")
FEELINGS = ("tired", "dizzy", "weak", "sick", "nauseous", "exhausted", "feverish", "anxious",
            "lightheaded", "achy", "cold", "hot", "shaky", "confused", "sleepy", "out of breath", "run down")
CONDITIONS = (
    "the flu", "a cold", "covid", "strep throat", "a migraine", "an ear infection", "pneumonia",
    "allergies", "asthma", "diabetes", "high blood pressure", "food poisoning", "a urinary tract infection",
    "bronchitis", "a sinus infection", "anemia", "dehydration", "a concussion", "appendicitis",
    "a sprained ankle", "tonsillitis", "chicken pox", "measles", "a stomach bug", "heat stroke",
    "an allergic reaction", "arthritis", "a kidney stone", "gout", "shingles", "mono", "eczema",
)
MEDICINES = ("ibuprofen", "paracetamol", "acetaminophen", "aspirin", "antibiotics", "cough syrup",
             "allergy pills", "my inhaler", "vitamin d", "antacids", "nasal spray", "eye drops",
             "sleeping pills", "cold medicine", "a painkiller", "my blood pressure pills")
ALLERGENS = ("peanuts", "penicillin", "shellfish", "cats", "pollen", "dust", "latex", "eggs", "milk",
             "bee stings", "gluten", "tree nuts", "soy", "strawberries")
PAIN_KINDS = ("sharp", "dull", "throbbing", "burning", "constant", "stabbing", "aching", "mild", "severe")
ACTIVITIES = ("walk", "breathe", "swallow", "bend over", "climb the stairs", "lie down", "eat", "cough",
              "run", "sit down", "stand up", "turn my head", "lift my arm", "bend my knee", "laugh",
              "go to the bathroom", "chew", "type", "sneeze", "take a deep breath")
TASKS = (
    "call the dentist", "buy milk", "water the plants", "take out the trash", "pick up the kids",
    "pay the electricity bill", "feed the cat", "take my medicine", "send the report", "book a table",
    "charge my phone", "walk the dog", "return the library books", "renew my passport", "call my mother",
    "clean the bathroom", "do the laundry", "buy a birthday present", "check the mail", "lock the door",
    "book a haircut", "change the bed sheets", "order more coffee", "cancel the meeting", "stretch",
    "drink some water", "pack my lunch", "fill up the car", "print the tickets", "answer that email",
    "wish Sarah a happy birthday", "bring an umbrella", "defrost the chicken", "reply to John",
    "go for a run", "start the dishwasher", "make a doctor's appointment", "pay the rent",
    "buy stamps", "pick up my prescription", "back up my computer", "prepare the slides",
)
MUSIC = ("some jazz", "classical music", "rock music", "something relaxing", "country music", "hip hop",
         "the radio", "my workout playlist", "something upbeat", "piano music", "the news", "an audiobook",
         "my favorite podcast", "some nineties music", "rain sounds", "the latest episode", "folk songs",
         "music for studying", "a lullaby", "the top hits", "some blues", "opera", "reggae")
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December")
STREETS = ("Maple", "Oak", "Main", "Elm", "Park", "Lake", "Hill", "Washington", "Cedar", "Pine", "River",
           "Church", "Mill", "Spring", "Sunset", "Highland", "Forest", "Meadow", "King", "Queen", "Station")
STREET_TYPES = ("street", "avenue", "road", "lane", "drive", "boulevard", "court", "way", "place")
SPORTS = ("football", "basketball", "baseball", "soccer", "hockey", "tennis", "cricket", "rugby")
WEATHER = ("rain", "snow", "be sunny", "be windy", "be cloudy", "get colder", "be foggy", "storm")
INVENTIONS = ("telephone", "light bulb", "printing press", "airplane", "bicycle", "radio", "computer",
              "internet", "camera", "microscope", "steam engine", "television", "refrigerator", "piano")
UNIT_PAIRS = (("ounces", "pound"), ("inches", "foot"), ("feet", "mile"), ("centimeters", "meter"),
              ("grams", "kilogram"), ("cups", "gallon"), ("teaspoons", "tablespoon"), ("minutes", "day"),
              ("seconds", "hour"), ("days", "year"), ("meters", "kilometer"), ("milliliters", "liter"),
              ("weeks", "year"), ("hours", "week"), ("quarts", "gallon"), ("pints", "quart"))
CONVERTIBLES = (("miles", "kilometers"), ("pounds", "kilograms"), ("degrees fahrenheit", "celsius"),
                ("degrees celsius", "fahrenheit"), ("dollars", "euros"), ("euros", "pounds"),
                ("inches", "centimeters"), ("feet", "meters"), ("cups", "milliliters"), ("ounces", "grams"))
CAPTION_ADJS = ("a blurry", "a dark", "a bright", "an old", "a black and white", "a colorful", "a close up")
PAST_VERBS = ("found", "bought", "lost", "painted", "cleaned", "fixed", "moved", "sold", "borrowed",
              "dropped", "washed", "opened", "carried", "brought", "ordered", "wrapped", "hid", "checked",
              "noticed", "picked up", "put away", "gave away", "broke", "forgot", "returned", "repaired")
WENT_VERBS = ("went to", "drove to", "walked to", "ran to", "stopped by", "is going to", "will go to",
              "wants to go to", "just got back from", "is on the way to", "called from")
WHEN_PAST = ("yesterday", "last night", "this morning", "last week", "on Monday", "two days ago",
             "an hour ago", "earlier today", "last weekend", "on Friday night", "a while ago",
             "this afternoon", "the other day", "last month", "just now")
OPINIONS = ("delicious", "too salty", "amazing", "terrible", "a bit cold", "really good", "overpriced",
            "perfect", "too spicy", "not bad at all", "better than last time", "absolutely wonderful")
WEATHER_ADJS = ("cold", "hot", "windy", "wet", "icy", "humid", "stormy", "foggy", "dark")


def _when(rng: random.Random) -> str:
    choices: tuple[Callable[[], str], ...] = (
        lambda: rng.choice(("today", "tomorrow", "tonight", "this afternoon", "this evening", "next week",
                            "this weekend", "tomorrow morning", "tomorrow night", "later today")),
        lambda: f"on {rng.choice(WEEKDAYS)}",
        lambda: f"next {rng.choice(WEEKDAYS)}",
        lambda: f"at {_time_words(rng)}",
        lambda: f"in {_duration_words(rng)}",
        lambda: f"on {_date_words(rng)}",
    )
    return rng.choice(choices)()


def _person(rng: random.Random) -> str:
    return rng.choice(NAMES) if rng.random() < 0.55 else rng.choice(RELATIVES)


_IRREGULAR_PLURALS = {"mouse": "mice", "goose": "geese", "sheep": "sheep", "deer": "deer", "fish": "fish",
                      "knife": "knives", "shelf": "shelves", "wolf": "wolves", "person": "people",
                      "child": "children", "octopus": "octopuses", "glass": "glasses", "bus": "buses",
                      "teddy bear": "teddy bears", "leaf": "leaves", "man": "men", "woman": "women"}


def plural(noun: str) -> str:
    """English plural of a curated noun ("puppy" -> "puppies", "box" -> "boxes", "mouse" -> "mice")."""
    if noun in _IRREGULAR_PLURALS:
        return _IRREGULAR_PLURALS[noun]
    if noun.endswith(("s", "x", "z", "ch", "sh")):
        return noun + "es"
    if noun.endswith("y") and noun[-2:-1] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


# --------------------------------------------------------------------------------------------------
# Templates. A {slot} names a filler below; a trailing digit ({name2}) asks for a second, independent
# draw of the same slot. A template ends with its sentence punctuation.

def _slot_fillers(rng: random.Random) -> dict[str, Callable[[], str]]:
    pick = rng.choice
    return {
        "name": lambda: pick(NAMES),
        "person": lambda: _person(rng),
        "relative": lambda: pick(RELATIVES),
        "city": lambda: pick(CITIES),
        "country": lambda: pick(COUNTRIES),
        "language": lambda: pick(LANGUAGES),
        "venue": lambda: pick(VENUES),
        "room": lambda: pick(ROOMS),
        "appliance": lambda: pick(APPLIANCES),
        "food": lambda: pick(FOODS),
        "dish": lambda: pick(DISHES),
        "meal": lambda: pick(MEALS),
        "animal": lambda: pick(ANIMALS),
        "animals": lambda: plural(pick(ANIMALS)),
        "object": lambda: pick(OBJECTS),
        "objects": lambda: plural(pick(OBJECTS)),
        "color": lambda: pick(COLORS),
        "size": lambda: pick(SIZES),
        "quality": lambda: pick(QUALITIES),
        "location": lambda: pick(LOCATIONS),
        "prep": lambda: pick(PREPOSITIONS),
        "people": lambda: pick(PEOPLE),
        "people_action": lambda: pick(PEOPLE_ACTIONS),
        "animal_action": lambda: pick(ANIMAL_ACTIONS),
        "caption_adj": lambda: pick(CAPTION_ADJS),
        "symptom": lambda: pick(SYMPTOMS),
        "body_part": lambda: pick(BODY_PARTS),
        "feeling": lambda: pick(FEELINGS),
        "condition": lambda: pick(CONDITIONS),
        "medicine": lambda: pick(MEDICINES),
        "allergen": lambda: pick(ALLERGENS),
        "pain_kind": lambda: pick(PAIN_KINDS),
        "activity": lambda: pick(ACTIVITIES),
        "task": lambda: pick(TASKS),
        "music": lambda: pick(MUSIC),
        "weekday": lambda: pick(WEEKDAYS),
        "month": lambda: pick(MONTHS),
        "sport": lambda: pick(SPORTS),
        "weather": lambda: pick(WEATHER),
        "weather_adj": lambda: pick(WEATHER_ADJS),
        "invention": lambda: pick(INVENTIONS),
        "past_verb": lambda: pick(PAST_VERBS),
        "went": lambda: pick(WENT_VERBS),
        "when_past": lambda: pick(WHEN_PAST),
        "opinion": lambda: pick(OPINIONS),
        "when": lambda: _when(rng),
        "time": lambda: _time_words(rng),
        "duration": lambda: _duration_words(rng),
        "date": lambda: _date_words(rng),
        "money": lambda: _money_words(rng),
        "temperature": lambda: _temperature_words(rng),
        "count": lambda: _count_words(rng),
        "year": lambda: year_words(rng.randint(1900, 2035)),
        "phone": lambda: _digits_words(rng, rng.choice((7, 10))),
        "code": lambda: _digits_words(rng, rng.randint(4, 6)),
        "small_number": lambda: number_words(rng.randint(2, 12)),
        "number": lambda: number_words(rng.randint(2, 999), british_and=rng.random() < 0.5),
        "big_number": lambda: number_words(rng.randint(1000, 99999), british_and=rng.random() < 0.5),
        "one_to_ten": lambda: number_words(rng.randint(1, 10)),
        "ordinal": lambda: ordinal_words(rng.randint(1, 31)),
        "percent": lambda: number_words(rng.choice((5, 10, 15, 20, 25, 30, 40, 50, 60, 75, 80, 90))),
        "address": lambda: f"{number_words(rng.randint(1, 999))} {pick(STREETS)} {pick(STREET_TYPES)}",
        "unit_pair": lambda: "{} are in a {}".format(*pick(UNIT_PAIRS)),
        "convert": lambda: "{} to {}".format(*pick(CONVERTIBLES)),
        "minutes": lambda: number_words(rng.choice((5, 10, 15, 20, 25, 30, 45))),
    }


TEMPLATES: dict[str, tuple[str, ...]] = {
    "command": (
        "Set a timer for {duration}.", "Set an alarm for {time}.", "Wake me up at {time}.",
        "Remind me to {task} {when}.", "Remind me {when} to {task}.", "Call {person}.",
        "Call {person} on speaker.", "Send a message to {person} saying I'll be there at {time}.",
        "Text {person} that I'm running {minutes} minutes late.", "Play {music}.",
        "Play {music} in the {room}.", "Turn on the {appliance} in the {room}.",
        "Turn off the {appliance}.", "Turn the {appliance} off in {duration}.",
        "Dim the lights in the {room}.", "Set the thermostat to {number} degrees.",
        "Add {food} to my shopping list.", "Add {food} and {food2} to the shopping list.",
        "Put {task} on my to do list.", "Cancel my alarm for {time}.", "Pause the music.",
        "Skip this song.", "Turn the volume up.", "Turn the volume down a little.",
        "Read my new messages.", "Schedule a meeting with {person} {when}.",
        "Move my {time} meeting to {weekday}.", "Show me directions to {venue}.",
        "Navigate to {address}.", "Find a pharmacy near me.", "Find a good {dish} recipe.",
        "Open the camera.", "Take a picture.", "Describe what the camera sees.",
        "Start a stopwatch.", "Stop the timer.", "Snooze for {minutes} minutes.",
        "Lock the front door.", "Turn the {room} lights {color}.", "Order more {food}.",
        "Book a table for {small_number} at {time}.", "Convert {number} {convert}.",
        "Translate good morning into {language}.", "Set a reminder for {person}'s birthday on {date}.",
        "Note that I took my {medicine} at {time}.", "Log my temperature as {temperature}.",
        "Tell me a joke.", "Flip a coin.", "Roll a die.", "Spell the word {animal} for me.",
        "Let {person} know that dinner is ready.", "Email {person} the photos from {when_past}.",
        "Start the {appliance} at {time}.", "Turn on do not disturb until {time}.",
    ),
    "question": (
        "What's the weather like in {city} {when}?", "Will it {weather} {when}?",
        "Do I need an umbrella {when}?", "What time is it in {city}?", "How far is {city} from {city2}?",
        "How long does it take to drive to {venue}?", "Is {venue} open {when}?",
        "When does the next train to {city} leave?", "What is the capital of {country}?",
        "How many {unit_pair}?", "What is {number} plus {number2}?", "What is {number} times {small_number}?",
        "What is {big_number} divided by {small_number}?", "What's {percent} percent of {number}?",
        "How do you say thank you in {language}?", "How do I make {dish}?",
        "How many calories are in {food}?", "Who invented the {invention}?",
        "When was the {invention} invented?", "What's on my calendar {when}?",
        "Do I have any meetings {when}?", "Who won the {sport} game last night?",
        "What's the population of {country}?", "What's the best way to get to {venue}?",
        "Where did I park the car?", "Where is the nearest {venue}?", "How old is {name}?",
        "What time does {venue} close {when}?", "Can you recommend a good book about {country}?",
        "What should I cook for {meal} {when}?", "Is it safe to eat {food} after the expiry date?",
        "How much is {money} in {convert}?", "How long should I boil {food}?",
        "What's the difference between a {animal} and a {animal2}?", "Can a {animal} eat {food}?",
        "How fast can a {animal} run?", "Where do {animals} live?", "What do {animals} eat?",
        "What day of the week is {date}?", "How many days until {date}?", "Is {year} a leap year?",
        "What happened in {year}?", "How do I get from {venue} to {venue2}?",
        "Can you hear me?", "Are you still listening?", "What did I ask you {when_past}?",
    ),
    "picture": (
        "What is in this picture?", "Describe this photo for me.", "Is there a {animal} in this image?",
        "What color is the {object}?", "How many {animals} are in the picture?",
        "Can you read the sign in this photo?", "What kind of {animal} is this?",
        "Tell me what you see.", "What's happening in this picture?",
        "What kind of {food} is in this picture?",
        "Who is standing next to the {object}?", "Write a caption for this image.",
        "Is the {object} {prep} the {object2}?", "What is the {animal} doing?",
        "Describe the {room} in this photo.", "Is there anything {color} in the picture?",
        "{people} {people_action} {location}.", "{people} {people_action}.",
        "A {size} {color} {animal} {animal_action} {location}.", "A {quality} {animal} {animal_action}.",
        "A {color} {object} {prep} a {color2} {object2}.", "A {quality} {object} {location}.",
        "{count} {animals} {animal_action} {location}.", "{count} {objects} {prep} a {quality} {object}.",
        "A close up of a {quality} {object}.", "A plate of {food} on a {quality} table.",
        "A {quality} {room} with a {color} sofa and a {object}.", "There is a {color} {object} {location}.",
        "{caption_adj} photo of a {animal} {location}.", "A {animal} and a {animal2} {location}.",
        "{people} standing next to a {color} {object}.", "A {size} {object} {prep} the {object2}.",
        "A {color} {object} and a {color2} {object2} {location}.", "{caption_adj} picture of {people}.",
        "A street sign {prep} a {color} car.", "A bowl of {food} next to a cup of coffee.",
    ),
    "health": (
        "I have had {symptom} for {duration}.", "I've had {symptom} since {when_past}.",
        "My {body_part} hurts when I {activity}.", "I feel {feeling} and I have {symptom}.",
        "Is {symptom} a symptom of {condition}?", "Could {symptom} and {symptom2} mean I have {condition}?",
        "My {relative} has a fever of {temperature}.", "I woke up with {symptom} this morning.",
        "Should I see a doctor about {symptom}?", "I've been feeling {feeling} for {duration}.",
        "What can I take for {symptom}?", "Can I take {medicine} with {medicine2}?",
        "I don't have {symptom} but I do have {symptom2}.", "No fever, but {symptom} and {symptom2}.",
        "My {body_part} is swollen and it really hurts.", "The pain is {pain_kind} and it comes and goes.",
        "The pain in my {body_part} is {pain_kind}.",
        "On a scale of one to ten, the pain is about {one_to_ten}.",
        "I'm allergic to {allergen}.", "I think I'm allergic to {allergen}.",
        "I have {symptom}, {symptom2} and {symptom3}.", "My {relative} has {symptom} and {symptom2}.",
        "How long does {condition} usually last?", "Is {condition} contagious?",
        "What are the symptoms of {condition}?", "How do I know if I have {condition}?",
        "I took {medicine} at {time} but I still have {symptom}.", "I hurt my {body_part} {when_past}.",
        "I fell and hurt my {body_part}.", "My temperature is {temperature}.",
        "I keep getting {symptom} after I eat.", "I get {symptom} when I {activity}.",
        "It started {when_past} with {symptom}.", "I don't feel {feeling}, just {symptom}.",
        "Is it normal to have {symptom} after taking {medicine}?", "Should I go to the emergency room?",
        "I have no {symptom} and no {symptom2}.", "My {relative} was diagnosed with {condition}.",
        "I'm {feeling} and I can't stop coughing.", "Check my symptoms please.",
    ),
    "statement": (
        "{person} {went} {venue} {when_past}.", "I left my {object} at {venue}.",
        "We need more {food} for the weekend.", "The {animal} is {animal_action} {location}.",
        "{person} said the {object} was {quality}.", "Can you believe it's already {month}?",
        "I'm running {minutes} minutes late.", "The meeting has been moved to {time} on {weekday}.",
        "Don't forget that {person} is coming over {when}.", "It's too {weather_adj} to go outside today.",
        "I think I'll have {food} for {meal}.", "{person} {past_verb} the {quality} {object} {when_past}.",
        "I {past_verb} a {color} {object} at {venue}.", "My {relative} {past_verb} my {object}.",
        "The food at {venue} was {opinion}.", "We're meeting {person} at {venue} at {time}.",
        "I have to {task} before {time}.", "{name} and {name2} are flying to {city} {when}.",
        "Our flight to {city} was delayed by {duration}.", "The {object} in the {room} is {quality}.",
        "I need to {task} and {task2} {when}.", "Please remember to {task}.",
        "{name} lives on {address}.", "My {relative} moved to {country} in {year}.",
        "The kids want a {animal} for {month}.", "I saw a {size} {animal} {location} {when_past}.",
        "There's a {quality} {object} in the {room}.", "{name} is allergic to {allergen}.",
        "The {appliance} in the {room} is broken again.", "We had {dish} for {meal} {when_past}.",
        "I'd like to go to {city} {when}.", "{person} will pick you up at {time}.",
        "It was {opinion}.", "Thanks, that's all for now.", "Never mind, I'll do it myself.",
        "Sorry, I didn't catch that.", "That's not what I said.", "Yes, please go ahead.",
    ),
    "numbers": (
        "My phone number is {phone}.", "The code is {code}.", "The total comes to {money}.",
        "My flight leaves at {time} on {date}.", "I was born on {date}, {year}.",
        "I was born in {year}.", "The address is {address}.", "It is {number} degrees outside.",
        "Add {small_number} cups of {food} to the bowl.", "The score was {small_number} to {small_number2}.",
        "Turn to page {number}.", "The package weighs {small_number} pounds.", "That costs {money}.",
        "The bill is {money}, including tip.", "There are {big_number} people in the stadium.",
        "My appointment is on {date} at {time}.", "We drove {number} miles {when_past}.",
        "The train leaves from platform {small_number} at {time}.", "My room number is {number}.",
        "The {ordinal} of {month} is a {weekday}.", "It's {time}.", "Give me {percent} percent.",
        "It happened in {year}.", "I paid {money} for the {object}.", "Meet me on the {ordinal} floor.",
    ),
}
# Share of grammar sentences per family; the picture and health families get more than a chatbot
# would, because the assistant captions images and checks symptoms.
FAMILY_WEIGHTS: dict[str, float] = {"command": 0.22, "question": 0.16, "picture": 0.17, "health": 0.19,
                                    "statement": 0.18, "numbers": 0.08}
DICTIONARY_TEMPLATES = (
    "How do you spell {word}?", "What does the word {word} mean?", "Define {word}.",
    "Is {word} a real word?", "What's another word for {word}?", "Use the word {word} in a sentence.",
    "What rhymes with {word}?", "How do you pronounce {word}?", "Look up {word} in the dictionary.",
    "What is the origin of the word {word}?",
)

_SLOT = re.compile(r"\{([a-z_]+?)\d?\}")
# Words after "a" that start with a vowel letter but a consonant sound, and the reverse.
_A_BEFORE_VOWEL = ("one", "uni", "use", "usu", "euro", "ukulele")
_AN_BEFORE_CONSONANT = ("hour", "honest", "honor", "heir")


def _fix_articles(sentence: str) -> str:
    def repl(m: re.Match[str]) -> str:
        article, word = m.group(1), m.group(2)
        lower = word.lower()
        vowel_sound = (lower[0] in "aeiou" and not lower.startswith(_A_BEFORE_VOWEL)) or lower.startswith(
            _AN_BEFORE_CONSONANT) or lower in ("eight", "eleven", "eighteen", "eighty")
        want = "an" if vowel_sound else "a"
        if article[0].isupper():
            want = want.capitalize()
        return f"{want} {word}"

    return re.sub(r"\b([Aa]n?) ([A-Za-z']+)", repl, sentence)


def _fill(template: str, fillers: dict[str, Callable[[], str]]) -> str:
    filled = _SLOT.sub(lambda m: fillers[m.group(1)](), template)
    filled = _fix_articles(filled)
    return filled[0].upper() + filled[1:]


def _dictionary_words(path: Path = DICT_WORDS) -> list[str]:
    """Lower-case alphabetic words of 4-12 letters (no proper nouns, possessives or abbreviations)."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        logger.warning("no word list at %s: dictionary-word sentences are skipped", path)
        return []
    return sorted({w for w in lines if 4 <= len(w) <= 12 and w.isascii() and w.isalpha() and w.islower()})


# --------------------------------------------------------------------------------------------------
# Fortunes.

_ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "st", "jr", "sr", "wm", "vs", "etc", "prof", "gen", "capt", "col",
                  "lt", "rev", "mt", "ft", "no", "co", "inc", "ltd", "ie", "eg", "sgt", "gov", "pres", "vol"}
_FORTUNE_OK = re.compile(r"^[A-Za-z' ,.;:!?\"-]+$")
_LABEL = re.compile(r"^\s*[A-Z][A-Za-z .']{0,20}:\s")
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"']?\s+(?=[\"']?[A-Z])")


def _speakable(sentence: str) -> bool:
    """True when a synthesizer would say exactly the words normalize_text keeps."""
    if not _FORTUNE_OK.match(sentence):
        return False
    for token in re.findall(r"[A-Za-z'.]+", sentence):
        letters = token.strip(".'")
        if re.search("[A-Z]{2}", letters):
            return False  # "NASA", "IBM", "WASPs": spelled out or read as a word, who knows
        if letters.lower() in _ABBREVIATIONS and token.endswith("."):
            return False
        if "." in letters:  # "e.g", "U.S"
            return False
    return True


def fortune_sentences(fortunes_dir: Path = FORTUNES_DIR) -> list[Prompt]:
    """Speakable sentences of 3-20 words from the plain-text fortune files, in file order, distinct."""
    if not fortunes_dir.is_dir():
        logger.warning("no fortune files at %s: fortune sentences are skipped", fortunes_dir)
        return []
    seen: set[str] = set()
    prompts: list[Prompt] = []
    for path in sorted(fortunes_dir.iterdir()):
        if path.suffix or not path.is_file():  # skip the .dat indexes and .u8 symlinks
            continue
        raw = path.read_text(encoding="latin-1")
        while re.search("[^\b]\b", raw):
            raw = re.sub("[^\b]\b", "", raw)  # overstrike: "_\bX" prints as X
        for entry in raw.split("\n%\n"):
            lines = [ln for ln in entry.splitlines() if not ln.lstrip().startswith("--")]
            body = " ".join(_LABEL.sub(" ", ln) for ln in lines)
            body = re.sub(r"\s*--\s*", ", ", body.replace("(tm)", ""))
            body = re.sub(r"\s+", " ", body.replace("(", ", ").replace(")", ", ")).strip()
            for sentence in _SENTENCE_END.split(body):
                spoken = re.sub(r"\s*,(\s*,)+", ",", sentence.replace('"', "")).strip(" ,;:-'")
                spoken = re.sub(r"\s+([,.;:!?])", r"\1", spoken)
                if not spoken[:1].isalpha() or not _speakable(spoken):
                    continue
                text = normalize_text(spoken)
                if MIN_WORDS <= len(text.split()) <= MAX_WORDS and text not in seen:
                    seen.add(text)
                    prompts.append(Prompt(text=text, spoken=spoken, source="fortune"))
    return prompts


# --------------------------------------------------------------------------------------------------
# Public API.

def _grammar_stream(rng: random.Random, words: Sequence[str], dictionary_fraction: float) -> Iterator[Prompt]:
    fillers = _slot_fillers(rng)
    families = list(FAMILY_WEIGHTS)
    weights = [FAMILY_WEIGHTS[f] for f in families]
    while True:
        if words and rng.random() < dictionary_fraction:
            spoken = rng.choice(DICTIONARY_TEMPLATES).replace("{word}", rng.choice(words))
            source = "dictionary"
        else:
            family = rng.choices(families, weights)[0]
            spoken = _fill(rng.choice(TEMPLATES[family]), fillers)
            source = "grammar"
        yield Prompt(text=normalize_text(spoken), spoken=spoken, source=source)


def build_prompts(
    n: int,
    seed: int,
    *,
    fortune_fraction: float = 0.1,
    dictionary_fraction: float = 0.05,
    fortunes_dir: Path = FORTUNES_DIR,
    words_path: Path = DICT_WORDS,
) -> list[Prompt]:
    """n distinct prompts (3-20 words each), deterministic given seed and the text files on disk.

    Up to fortune_fraction of them are fortune sentences (fewer if the files hold fewer), about
    dictionary_fraction of the rest dictionary-word look-ups, and the rest template sentences.
    Raises ValueError when the sources cannot give n distinct sentences.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not 0.0 <= fortune_fraction <= 1.0 or not 0.0 <= dictionary_fraction <= 1.0:
        raise ValueError("fortune_fraction and dictionary_fraction must lie in [0, 1]")
    rng = random.Random(seed)
    fortunes = fortune_sentences(fortunes_dir) if fortune_fraction > 0 else []
    n_fortunes = min(len(fortunes), round(n * fortune_fraction))
    prompts = rng.sample(fortunes, n_fortunes)
    seen = {p.text for p in prompts}
    words = _dictionary_words(words_path) if dictionary_fraction > 0 else []
    stream = _grammar_stream(rng, words, dictionary_fraction)
    budget = 50 * (n - len(prompts)) + 1000
    while len(prompts) < n and budget > 0:
        budget -= 1
        prompt = next(stream)
        if MIN_WORDS <= len(prompt.text.split()) <= MAX_WORDS and prompt.text not in seen:
            seen.add(prompt.text)
            prompts.append(prompt)
    if len(prompts) < n:
        raise ValueError(f"could only build {len(prompts)} distinct sentences of the {n} asked for")
    rng.shuffle(prompts)
    return prompts


def build_sentences(n: int, seed: int) -> list[str]:
    """n distinct normalized sentences (3-20 words each); deterministic given seed."""
    return [p.text for p in build_prompts(n, seed)]


def _rank(text: str, seed: int) -> bytes:
    return hashlib.blake2b(f"{seed}\0{text}".encode(), digest_size=8).digest()


def hold_out(
    prompts: Sequence[Prompt], dev_fraction: float, test_fraction: float, seed: int
) -> SentenceSplit:
    """Split prompts by sentence into train/dev/test; a transcript lands in exactly one split.

    Prompts are ranked by a seeded hash of their text, so a sentence's split does not depend on the
    order of `prompts`; test takes round(test_fraction * n) sentences (at least one when the fraction
    is positive), dev the next round(dev_fraction * n), train the rest. Duplicate texts are dropped.
    """
    if dev_fraction < 0 or test_fraction < 0 or dev_fraction + test_fraction >= 1:
        raise ValueError(
            f"need dev_fraction, test_fraction >= 0 with a sum < 1, got {dev_fraction}, {test_fraction}"
        )
    unique = list({p.text: p for p in prompts}.values())
    ranked = sorted(unique, key=lambda p: _rank(p.text, seed))
    n = len(ranked)
    n_test = max(1, round(test_fraction * n)) if test_fraction > 0 and n >= 3 else round(test_fraction * n)
    n_dev = max(1, round(dev_fraction * n)) if dev_fraction > 0 and n >= 3 else round(dev_fraction * n)
    test, dev, train = ranked[:n_test], ranked[n_test:n_test + n_dev], ranked[n_test + n_dev:]
    order = {p.text: i for i, p in enumerate(unique)}
    return SentenceSplit(*(sorted(part, key=lambda p: order[p.text]) for part in (train, dev, test)))


def main(argv: list[str] | None = None) -> int:
    """Print sentences: ``python -m training.speech_ctc.text [N] [SEED]``."""
    args = sys.argv[1:] if argv is None else argv
    n = int(args[0]) if args else 20
    seed = int(args[1]) if len(args) > 1 else 0
    for prompt in build_prompts(n, seed):
        sys.stdout.write(f"{prompt.source}\t{prompt.spoken}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
